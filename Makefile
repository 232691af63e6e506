PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs exactly what uv.lock pins (every direct and transitive dependency, dev extras included).
# Its own version is pinned here and in the lock (dev extra), so the bootstrap and the sync agree.
UV_VERSION := 0.13.9
UV := $(BIN)/uv
# Optional extras from pyproject.toml to install too (all pinned by the lock), e.g. EXTRAS="dev torchcodec".
EXTRAS ?= dev
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# uv trusts its bundled roots; use the system's store where there is one (as pip here does).
ifneq ($(wildcard /etc/ssl/certs/ca-certificates.crt),)
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt
endif
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

# Any failing command stops make with its exit status (no pipes that hide errors).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

.PHONY: install test demo lint bench clean lock upgrade-check toy-model

$(BIN)/vxl: pyproject.toml uv.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q "uv==$(UV_VERSION)"
	$(UV) sync --locked $(addprefix --extra ,$(EXTRAS))
	$(BIN)/python -c "import model, storage, tasks, flows, vico_synth, torch, lancedb, ray, prefect, decord, open_clip"
	$(BIN)/python -m model.environment --check
	touch $(BIN)/vxl

install: $(BIN)/vxl

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

demo: install
	$(BIN)/vxl demo

lint: install
	$(BIN)/ruff check .

# The toy model of model/weights/toy, from scratch (docs/EVALUATION.md, "Ninth session" to "Eleventh
# session"): the vision tower learns each frame's labels (max over its tokens, then every token), then
# a fresh LLM learns every question type on it with each question weighing the same, then 400, 600 and
# 500 steps more with scene count and event order asked more often (the last adding short videos asked
# only event order), then 600 and 1,000 steps that also ask event_label (which number a quoted event
# line has). TOY_OUT/llm6/final is the model. TOY_*_STEPS set each stage's length.
TOY_OUT ?= runs/toy-model
TOY_VISION_STEPS ?= 1800
TOY_TOKEN_STEPS ?= 1800
TOY_LLM_STEPS ?= 1000
TOY_LLM2_STEPS ?= 400
TOY_LLM3_STEPS ?= 600
TOY_LLM4_STEPS ?= 500
TOY_LLM5_STEPS ?= 600
TOY_LLM6_STEPS ?= 1000
TOY_TYPES := bg_start,bg_end,object_color,object_shape,scene_count,bg_order,bg_first,event_order,describe
# stage 4: scene count and event order drawn three times as often, "which comes first" twice
TOY_TYPES_COUNT := bg_start,bg_end,object_color,object_shape,scene_count,scene_count,scene_count,bg_order,bg_first,bg_first,event_order,event_order,event_order,describe
# stages 5 and 6: the same, event order four times as often
TOY_TYPES_ORDER := bg_start,bg_end,object_color,object_shape,scene_count,scene_count,scene_count,bg_order,bg_first,bg_first,event_order,event_order,event_order,event_order,describe
# stage 6 adds 2- and 3-scene videos asked only event order (four questions each)
TOY_ORDER_ONLY := types=event_order,event_order,event_order,event_order
# stages 7 and 8: stage 6's data, with event_label asked three times (four on the short videos)
TOY_TYPES_LABEL := bg_start,bg_end,object_color,object_shape,scene_count,scene_count,scene_count,bg_order,bg_first,bg_first,event_order,event_order,event_order,event_order,event_label,event_label,event_label,describe
TOY_ORDER_LABEL := $(TOY_ORDER_ONLY),event_label,event_label,event_label,event_label
# stages 6-8: stage OUT ($1) from stage FROM ($2); short 2- and 3-scene videos asked TYPES ($3), the
# rest QUESTION_TYPES ($4); STEPS ($5), CHECKPOINT_EVERY ($6), SEED ($7)
define toy_order_stage
OMP_NUM_THREADS=1 $(BIN)/vxl train --out $(TOY_OUT)/$(1) --model $(TOY_OUT)/$(2)/final --trainable llm,projector \
    --loss-weighting turn --data toy:800:3:seconds=1-4 --data toy:800 --data "toy:400:5:scenes=2:seconds=2-8:$(3)" \
    --data "toy:400:6:scenes=3:seconds=2-8:$(3)" --cache-dir $(TOY_OUT)/cache \
    --question-types $(4) --questions-per-sample 9 --planner mixed --curriculum "0:2,4,8,12,16" \
    --steps $(5) --batch-size 8 --lr 5e-4 --warmup-steps 20 --checkpoint-every $(6) --keep-checkpoints 5 \
    --seed $(7) --workers 2 --no-flow
endef
toy-model: install
	$(BIN)/vxl train --out $(TOY_OUT)/vision --model toy-init --objective frames --frame-pool max \
	    --data toy:800 --cache-dir $(TOY_OUT)/cache --steps $(TOY_VISION_STEPS) --batch-size 4 --lr 2e-3 --warmup-steps 20 \
	    --checkpoint-every 600 --seed 0 --local --no-flow
	$(BIN)/vxl train --out $(TOY_OUT)/vision-token --model $(TOY_OUT)/vision/final --objective frames \
	    --frame-pool token --data toy:800 --cache-dir $(TOY_OUT)/cache --steps $(TOY_TOKEN_STEPS) --batch-size 4 --lr 2e-3 \
	    --warmup-steps 20 --checkpoint-every 600 --seed 0 --local --no-flow
	OMP_NUM_THREADS=1 $(BIN)/vxl train --out $(TOY_OUT)/llm --model toy-init --init-vision $(TOY_OUT)/vision-token/final \
	    --trainable llm,projector --loss-weighting turn --data toy:800:3:seconds=1-4 --data toy:800 \
	    --cache-dir $(TOY_OUT)/cache --question-types $(TOY_TYPES) --questions-per-sample 9 --planner mixed \
	    --curriculum "0:2,4;300:2,4,8,12,16" --steps $(TOY_LLM_STEPS) --batch-size 8 --lr 1e-3 --warmup-steps 40 \
	    --checkpoint-every 200 --keep-checkpoints 10 --workers 2 --no-flow
	OMP_NUM_THREADS=1 $(BIN)/vxl train --out $(TOY_OUT)/llm2 --model $(TOY_OUT)/llm/final --trainable llm,projector \
	    --loss-weighting turn --data toy:800:3:seconds=1-4 --data toy:800 --cache-dir $(TOY_OUT)/cache \
	    --question-types $(TOY_TYPES_COUNT) --questions-per-sample 9 --planner mixed --curriculum "0:2,4,8,12,16" \
	    --steps $(TOY_LLM2_STEPS) --batch-size 8 --lr 5e-4 --warmup-steps 20 --checkpoint-every 200 --keep-checkpoints 5 \
	    --seed 1 --workers 2 --no-flow
	OMP_NUM_THREADS=1 $(BIN)/vxl train --out $(TOY_OUT)/llm3 --model $(TOY_OUT)/llm2/final --trainable llm,projector \
	    --loss-weighting turn --data toy:800:3:seconds=1-4 --data toy:800 --cache-dir $(TOY_OUT)/cache \
	    --question-types $(TOY_TYPES_ORDER) --questions-per-sample 9 --planner mixed --curriculum "0:2,4,8,12,16" \
	    --steps $(TOY_LLM3_STEPS) --batch-size 8 --lr 5e-4 --warmup-steps 20 --checkpoint-every 200 --keep-checkpoints 5 \
	    --seed 2 --workers 2 --no-flow
	$(call toy_order_stage,llm4,llm3,$(TOY_ORDER_ONLY),$(TOY_TYPES_ORDER),$(TOY_LLM4_STEPS),250,3)
	$(call toy_order_stage,llm5,llm4,$(TOY_ORDER_LABEL),$(TOY_TYPES_LABEL),$(TOY_LLM5_STEPS),200,4)
	$(call toy_order_stage,llm6,llm5,$(TOY_ORDER_LABEL),$(TOY_TYPES_LABEL),$(TOY_LLM6_STEPS),250,5)

# Re-resolve uv.lock after editing pyproject.toml (keeps every other pin; see docs/OPERATIONS.md).
lock: install
	$(UV) lock

# Resolve the newest versions pyproject.toml allows into a scratch venv and run the fidelity tests
# there (oracle, Qwen2/CLIP equivalence, archive vs fresh encode, drift invariants, canary).
# Touches neither uv.lock nor .venv. docs/OPERATIONS.md: "Upgrading dependencies".
upgrade-check: install
	$(BIN)/python tests/upgrade_check.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .upgrade-check
