"""Token identity with the official momask-codes on a tiny official-layout model (needs a checkout of the peer).

Set SAFEMOTION_MOMASK_PEER to a momask-codes checkout (it is never part of this repository; it needs `einops`).
The same check at the official size runs in bench/peer_momask.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from safemotion.decoding import SamplingConfig
from safemotion.generate import Generator
from safemotion.models import import_momask, load_model_dir
from safemotion.models.config import LengthEstimatorConfig, TransformerConfig, VQConfig
from safemotion.models import LengthEstimator, MaskTransformer, ResidualTransformer, RVQVAE
from test_momask_import import MASK_OPT, RES_OPT, TINY_T_OPT, TINY_VQ_OPT, write_official_layout

PEER = os.environ.get("SAFEMOTION_MOMASK_PEER")
pytestmark = pytest.mark.skipif(not PEER, reason="set SAFEMOTION_MOMASK_PEER to a momask-codes checkout")


@pytest.fixture(scope="module")
def peer_module():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import peer_momask

    return peer_momask


def test_tiny_model_tokens_identical_to_the_official_code(peer_module, tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vq = VQConfig(nb_code=16, code_dim=8, width=16, depth=2, num_quantizers=3)
    t = TransformerConfig(latent_dim=16, ff_size=32, num_layers=2, num_heads=2, num_tokens=16, code_dim=8,
                          num_quantizers=3)
    vq_model = RVQVAE(vq)
    for layer in vq_model.quantizer.layers:
        layer.codebook.normal_()
    states = {"vq": vq_model.state_dict(), "mask": MaskTransformer(t).state_dict(),
              "res": ResidualTransformer(t).state_dict(),
              "length": LengthEstimator(LengthEstimatorConfig()).state_dict()}
    for state in (states["mask"], states["res"]):  # spread the logits so top-1 is far from ties
        for key, value in state.items():
            if key != "position_enc.pe" and value.is_floating_point():
                value.normal_(0, 0.3)
    rng = np.random.default_rng(0)
    checkpoints = write_official_layout(tmp_path / "src", states, TINY_VQ_OPT, {**MASK_OPT, **TINY_T_OPT},
                                        {**RES_OPT, **TINY_T_OPT}, rng.normal(size=263).astype(np.float32),
                                        rng.uniform(0.1, 2, size=263).astype(np.float32))
    official = peer_module.Official(Path(PEER), checkpoints)
    model_dir = import_momask(checkpoints, tmp_path / "ours")
    sampling = SamplingConfig(temperature=peer_module.TOP1)
    ours = Generator(load_model_dir(model_dir), None, sampling, "cpu")

    features = torch.randn(6, 512, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([12, 3, 9, 12, 1, 7])
    theirs = official.tokens(features, lengths, peer_module.TOP1)
    mine = ours.generate_from_features(features, list(range(6)), lengths.tolist(), smpl=False)
    assert theirs.shape == (6, 12, 3)
    for i, (motion, n) in enumerate(zip(mine, lengths.tolist())):
        np.testing.assert_array_equal(motion.tokens, theirs[i, :n].numpy())
        assert (theirs[i, n:] == -1).all()
    assert len({tuple(m.tokens[:, 0]) for m in mine}) > 1  # the conditions matter: not one constant sequence
