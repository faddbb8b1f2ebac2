"""autoglm-bench: reproducible evaluation, prompt search and fine-tuning of GLM-family and Hugging Face
language models, driven by Hydra configs. Run ``python -m autoglm_bench --help``."""

__version__ = "0.1.0"
