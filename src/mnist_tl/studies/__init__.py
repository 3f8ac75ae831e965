"""The studies, one module per notebook group, above ``modeling/`` and the data layer:
``slide_deck`` (notebooks 02-04), ``pretrained_backbones`` (05), ``when_transfer_pays``
(06); each ``*_section`` module renders that study's part of ``reports/results.md``."""
