"""lab_utils: the code behind the fine-tuning lab's notebooks (data, training, serving, measuring)."""

__version__ = "0.1.0"
