"""Loaded by the worker processes of tests that put this directory on PYTHONPATH: torch reports
EVOARENA_TEST_FAKE_GPUS GPUs, so that a CPU machine can check which device each pool process
chooses. Nothing is ever computed on them (the test only asks the processes which they chose)."""

import os

import torch

_gpus = int(os.environ.get("EVOARENA_TEST_FAKE_GPUS", "0"))
torch.cuda.device_count = lambda: _gpus
torch.cuda.is_available = lambda: _gpus > 0
