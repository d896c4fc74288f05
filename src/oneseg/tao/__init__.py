"""NVIDIA TAO specs in oneseg: the alias table (`table`), its resolution (`resolve`) and the
backbone names (`backbones`). `oneseg.spec` reads every spec through here."""
