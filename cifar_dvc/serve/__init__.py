"""The web demo of the trained variants (console script ``cifar-dvc-serve``).

- ``app``: the Flask application, its JSON API and the command line.
- ``predictor``: model loading, the compiled inference call, preprocessing through ``cifar_dvc.images``.
- ``variants``: every ``<name>.keras`` of a ``models/`` folder, loaded lazily, cached within a memory budget.
- ``explain``: occlusion maps (which regions of the model's input its answer depends on).
- ``urlfetch``: fetching client-supplied image URLs without server-side request forgery.
- ``static/``: the page (plain HTML/JS) and the vendored D3 chart library.

Importing this package loads neither TensorFlow nor Flask.
"""
