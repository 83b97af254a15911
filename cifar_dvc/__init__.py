"""cifar_dvc: the library behind the DVC pipeline in ``dvc.yaml`` (stages live in ``stages/``)."""

__version__ = "0.1.0"
