""" Session-wide test setup: no network, and the plugin imported before any test module is collected. """
import os

# Must be set before huggingface_hub is imported: with no network, Hub calls must fail fast, not retry.
os.environ['HF_HUB_OFFLINE'] = '1'

import timm_gct  # noqa: E402,F401  registers the models before timm's test module builds its parameter lists
