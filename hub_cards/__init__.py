""" Model card data: one YAML file per mechanism, rendered by ``timm_gct.hub`` (``timm-gct card``).

Installed as the package ``timm_gct.hub_cards``. Each ``<mechanism>.yaml`` (the key in
``timm_gct.models.MECHANISMS``; ``resnet.yaml`` for the plain baselines, ``gct_official.yaml`` for the official GCT
layout) holds: mechanism, title, paper, venue, arxiv (or null and paper_url), code, description, placement,
deviations (a list) and citation (BibTeX). ``resnet_weights.yaml`` describes timm's ResNet weights that the
identity-at-init models start from, with their ImageNet-1k accuracy as published by timm; ``releases.yaml`` how the
authors' released weights (the ``official_in1k`` tags) were trained and evaluated, by mechanism.

Every fact here comes from the paper, the official code or a cited file; no number without a source.
"""
