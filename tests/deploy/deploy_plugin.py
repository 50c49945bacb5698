"""Imported by every deployed process of the tests (``PRIVSPK_PLUGINS=deploy_plugin``): the tiny encoder."""

from privspk.models import ECAPAEncoder, list_encoders, register_encoder

TINY_ENCODER = "test_tiny_ecapa"

if TINY_ENCODER not in list_encoders():

    @register_encoder(TINY_ENCODER)
    def _tiny(*, in_dim: int) -> ECAPAEncoder:
        return ECAPAEncoder(in_dim, channels=16, embed_dim=16, dilations=(2, 3), attention_channels=8)
