"""Training: shared loop pieces (loops.py), patch 3-stage (patch.py), whole-image 2-stage (whole.py),
local fine-tuning with optional FedProx (finetune.py)."""
