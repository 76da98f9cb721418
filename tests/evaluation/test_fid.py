import numpy as np
import pytest
import torch

from ramm.evaluation.fid import FID, EncoderFeatures


def noise_images(seed: int, n: int = 64, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, 16, 16, 3), dtype=np.uint8)


def test_fid_of_a_set_with_itself_is_zero(conv_encoder):
    imgs = noise_images(0)
    assert 0.0 <= FID.from_encoder(conv_encoder)(imgs, imgs) < 1e-4


def test_fid_grows_with_the_distance_between_distributions(conv_encoder):
    fid = FID.from_encoder(conv_encoder)
    same_dist = fid(noise_images(0), noise_images(1))
    dark = fid(noise_images(0), noise_images(2, high=80))
    assert 0 < same_dist < dark
    assert dark > 5 * same_dist


def test_uint8_arrays_and_float_tensors_give_the_same_fid(conv_encoder):
    a, b = noise_images(0), noise_images(3, low=100)
    as_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    fid = FID.from_encoder(conv_encoder)
    assert fid(as_tensor(a), as_tensor(b)) == pytest.approx(fid(a, b), rel=1e-4)


def test_batching_does_not_change_fid(conv_encoder):
    a, b = noise_images(0), noise_images(4, high=128)
    whole = FID.from_encoder(conv_encoder)(a, b)
    small_batches = FID(FID.from_encoder(conv_encoder).metric, "x", batch_size=7)(a, b)
    assert small_batches == pytest.approx(whole, rel=1e-4)


def test_feature_size_comes_from_the_encoder_without_probing_it(conv_encoder):
    fid = FID.from_encoder(conv_encoder)
    assert fid.metric.real_features_sum.shape == (conv_encoder.dim,)
    assert conv_encoder.calls == []  # torchmetrics did not push a dummy 299x299 image through it
    assert fid.name == "FID on ramm-encoder features"


def test_feature_wrapper_takes_torchmetrics_uint8_nchw(conv_encoder):
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    feats = EncoderFeatures(conv_encoder)(x)
    assert feats.shape == (5, conv_encoder.dim) and feats.dtype == torch.float32


def test_fid_rejects_bad_input(conv_encoder):
    fid = FID.from_encoder(conv_encoder)
    with pytest.raises(ValueError, match="at least 2 fake"):
        fid(noise_images(0), noise_images(1, n=1))
    with pytest.raises(ValueError, match="real: expected uint8"):
        fid(noise_images(0).astype(np.float32), noise_images(1))
    with pytest.raises(ValueError, match="fake: expected float"):
        fid(noise_images(0), torch.zeros(4, 16, 16, 3))


def test_from_path_loads_a_saved_dual_encoder(tmp_path):
    from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
    cfg = DualEncoderConfig(image_size=16, channels=(8, 16), text_vocab_size=300, text_max_len=8, text_width=16,
                            text_layers=1, text_heads=2, embed_dim=16)
    DualEncoder(cfg, train_text_tokenizer(["red emoji: a", "blue emoji: b"], 300)).save_pretrained(tmp_path / "enc")
    fid = FID.from_path(tmp_path / "enc")
    assert fid.name == "FID on ramm-encoder features (enc)"
    assert fid(noise_images(0, n=8), noise_images(0, n=8)) == pytest.approx(0.0, abs=1e-4)


def test_from_path_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        FID.from_path(tmp_path / "nothing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin"):
        FID.from_path(tmp_path / "weights.bin")


def test_inception_weights_need_torch_fidelity(tmp_path):
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed; this checks the message when it is not")
    except ImportError:
        pass
    (tmp_path / "pt_inception.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="torch-fidelity"):
        FID.from_path(tmp_path / "pt_inception.pth")
