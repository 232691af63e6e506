"""VICO (Visual Clue Order) sample synthesis: clips, captioners, clue extractors, sample builder.

Modules: `clips` (clip spans by decoded timestamps), `captioners` (`CAPTIONERS` registry),
`extractors` (`EXTRACTORS` registry), `samples` (selection, shuffling, forms, splits, LLaVA JSON),
`schema` (documented JSON schema + validator), `cinepile` (CinePile rows joined to local files),
`pipeline` (`synth_video`, one video as a pure function; `summarize`). See docs/VICO.md.
May import model/ and storage/, never prefect or ray.
"""
