"""NVIDIA TAO specs in oneseg: the alias table (`table`), which TAO model a spec is for and
TAO's defaults (`defaults`), the resolution of keys (`resolve`, with the groups of `groups` and
`run_groups`), the backbone names (`backbones`) and what a spec's TAO keys became (`report`).
`oneseg.spec` reads every spec through here."""
