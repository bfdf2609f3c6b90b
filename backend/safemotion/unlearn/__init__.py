"""Unlearning of a concept in a MoMask-family model: Latent Code Replacement (lcr, lcr_pipeline), the UCE/RECE/
fine-tune baselines, forgotten-code flagging and motion audits. Submodules are imported where used (no torch at CLI
start-up)."""
