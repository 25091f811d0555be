"""datadistill: dataset distillation by trajectory matching and INFER, with the field's
evaluation protocols."""

__version__ = "0.1.0"
