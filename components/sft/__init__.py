"""sft: the cold-start stage. Supervised fine-tuning of the VLM on structured chain-of-thought.

The stage core (everything here but `component.py`) imports no kfp: `python -m coldstart.sft`,
the kfp component and torchrun workers all call `coldstart.sft.cli.main`.
"""
