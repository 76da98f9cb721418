import pytest
import torch

from ramm.decoding.guidance import cfg_logits, contrastive_scores
from ramm.decoding.sampling import sample, top_k_filter, top_p_filter

torch.set_num_threads(1)


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_smallest_nucleus_and_always_the_best_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.75)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = top_p_filter(probs.log(), 0.01)
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]
    # scatter back to the original order: shuffle columns
    perm = torch.tensor([2, 0, 3, 1])
    out = top_p_filter(probs.log()[:, perm], 0.75)
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]


def test_sample_temperature_zero_is_argmax_and_seed_is_deterministic():
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, temperature=0), logits.argmax(-1))
    a = sample(logits, 1.0, generator=torch.Generator().manual_seed(3))
    b = sample(logits, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sample_never_emits_a_disallowed_token():
    logits = torch.zeros(64, 10)
    logits[:, 5:] = float("-inf")
    toks = sample(logits, 1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert (toks < 5).all()


def test_sample_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(20000, 3)
    toks = sample(logits, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(toks, minlength=3).float() / len(toks)
    assert torch.allclose(freq, probs, atol=0.02)


def test_sample_rejects_negative_temperature():
    with pytest.raises(ValueError, match="temperature"):
        sample(torch.zeros(1, 3), temperature=-1.0)


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    cond, uncond = torch.randn(3, 20), torch.randn(3, 20)
    assert torch.allclose(cfg_logits(cond, uncond, 1.0), cond)
    assert torch.allclose(cfg_logits(cond, uncond, 0.0), uncond)
    assert torch.allclose(cfg_logits(cond, uncond, 3.0), uncond + 3 * (cond - uncond))
    with pytest.raises(ValueError, match="shape"):
        cfg_logits(cond, uncond[:, :5], 2.0)


def test_cd_k_with_alpha_zero_and_uniform_amateur_is_greedy():
    logp = torch.randn(8, 30).log_softmax(-1)
    uniform = torch.full_like(logp, -torch.log(torch.tensor(30.0)))
    scores = contrastive_scores(logp, uniform, alpha=0.0, k=5)
    assert torch.isfinite(scores).all()
    assert torch.equal(scores.argmax(-1), logp.argmax(-1))


def test_cd_k_candidate_set_is_alpha_times_kth_probability():
    p = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]])
    ama = torch.tensor([[0.5, 0.1, 0.1, 0.01, 0.29]]).log()
    # k=2 -> 0.3; alpha 0.5 -> threshold 0.15: candidates {0, 1, 2}
    scores = contrastive_scores(p.log(), ama, alpha=0.5, k=2)
    assert torch.isfinite(scores).tolist() == [[True, True, True, False, False]]
    # token 3 has the largest ratio but is not a candidate; among candidates, 1 and 2 (ratio 3 and 2) beat 0
    assert scores.argmax(-1).item() == 1
    assert torch.allclose(scores[0, :3], (p / ama.exp()).log()[0, :3])


def test_cd_k_never_admits_impossible_tokens():
    logp = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    scores = contrastive_scores(logp, torch.full((1, 3), -1.0), alpha=0.0, k=1)
    assert torch.isfinite(scores).tolist() == [[True, False, False]]


@pytest.mark.parametrize("alpha,k", [(-0.1, 1), (1.5, 1), (0.1, 0), (0.1, 99)])
def test_cd_k_rejects_bad_parameters(alpha, k):
    with pytest.raises(ValueError):
        contrastive_scores(torch.zeros(1, 4), torch.zeros(1, 4), alpha, k)
