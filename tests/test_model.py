"""The LRA classifier: padding invariance, pooling, tied weights, checkpointing, precision, dual encoder."""

import pytest
import torch

from lra.attention import ATTENTIONS
from lra.errors import ConfigError
from lra.model import LRAClassifier, count_parameters

NAMES = sorted(ATTENTIONS)
VOCAB, MAX_LEN = 20, 16


def make(attention="softmax", **overrides) -> LRAClassifier:
    kwargs = dict(vocab_size=VOCAB, max_seq_len=MAX_LEN, embedding_dim=16, transformer_hidden_dim=32, head_dim=8,
                  num_head=2, num_layers=2, dropout_prob=0.0, attention_dropout=0.0, pooling_mode="MEAN",
                  num_classes=3, learn_pos_emb=True, tied_weights=False, attention=attention)
    torch.manual_seed(0)
    return LRAClassifier(**{**kwargs, **overrides})


def batch(lengths, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return ids, mask


@pytest.mark.parametrize("pooling", ["MEAN", "CLS"])
@pytest.mark.parametrize("name", NAMES)
def test_logits_invariant_to_padding(name, pooling):
    model = make(name, pooling_mode=pooling).eval()
    ids, mask = batch([10, 6, 1], 10)
    logits = model(ids, mask)
    longer = torch.cat([ids, torch.randint(0, VOCAB, (3, 5))], dim=1)  # arbitrary ids in the padding
    longer[:, :10] = torch.where(mask, ids, torch.randint(0, VOCAB, ids.shape))
    assert torch.allclose(model(longer, torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1)), logits,
                          atol=1e-5)


def test_cls_is_prepended_not_overwriting_a_real_token():
    model = make(pooling_mode="CLS").eval()
    ids, mask = batch([8, 8], 8)
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args) and None)
    logits = model(ids, mask)
    hook.remove()
    x, block_mask = seen[0]
    assert x.shape == (2, 9, 16) and block_mask.shape == (2, 9) and block_mask.all()
    assert torch.allclose(x[:, 0], model.cls_token + model.pos_emb[0])
    assert torch.allclose(x[:, 1], model.token_emb(ids[:, 0]) + model.pos_emb[1])  # first real token survives
    changed = ids.clone()
    changed[:, 0] = (ids[:, 0] % (VOCAB - 1)) + 1
    assert not torch.allclose(model(changed, mask), logits)


@pytest.mark.parametrize("pooling", ["MEAN", "CLS"])
def test_full_length_works_and_too_long_raises(pooling):
    model = make(pooling_mode=pooling, learn_pos_emb=pooling == "MEAN")
    assert model(*batch([MAX_LEN], MAX_LEN)).shape == (1, 3)  # the CLS slot comes on top of max_seq_len
    with pytest.raises(ValueError, match="max_seq_len"):
        model(*batch([MAX_LEN], MAX_LEN + 1))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as err:
        make(pooling_mode="MAX")
    assert err.value.key == "model.pooling_mode" and "MEAN" in str(err.value) and "CLS" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make("linformer")
    assert err.value.key == "attention.name"
    with pytest.raises(ConfigError) as err:
        make("tpr", attention_options={"scale_init": 2.0})
    assert err.value.key == "attention.scale_init"


def test_attention_options_reach_the_mechanism():
    model = make("hrr-quadratic", attention_options={"scale_init": 3.0, "learn_scale": False, "eps": 0.5})
    for blk in model.blocks:
        assert blk.attention.eps == 0.5 and blk.attention.scale.scale_init == 3.0
        assert not blk.attention.scale.learn_scale


def test_tied_weights_share_one_block():
    tied, one, three = make(tied_weights=True, num_layers=3), make(num_layers=1), make(num_layers=3)
    block = count_parameters(one.blocks[0])
    assert count_parameters(tied) == count_parameters(one)
    assert count_parameters(three) == count_parameters(one) + 2 * block
    assert all(b is tied.blocks[0] for b in tied.blocks)
    with torch.no_grad():
        tied.blocks[0].qkv.weight.add_(1.0)
    assert torch.equal(tied.blocks[2].qkv.weight, tied.blocks[0].qkv.weight)
    calls = []
    tied.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    tied(*batch([5], 5))
    assert len(calls) == 3  # applied num_layers times


@pytest.mark.parametrize("name", NAMES)
def test_checkpointing_gives_the_same_gradients(name):
    ids, mask = batch([12, 7], 12)
    grads = []
    for ckpt in (False, True):
        model = make(name, attention_grad_checkpointing=ckpt, pooling_mode="CLS").train()
        model(ids, mask).logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=0), n


@pytest.mark.parametrize("pooling", ["MEAN", "CLS"])
@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name, pooling):
    model = make(name, pooling_mode=pooling, attention_grad_checkpointing=True)
    model(*batch([9, 4], 9)).logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", NAMES)
def test_zero_initialised_weights_stay_finite(name):
    model = make(name, pooling_mode="CLS")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    logits = model(*batch([6, 1], 6))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_runs_and_stays_close_to_fp32(name):
    model = make(name).eval()
    ids, mask = batch([16, 9, 3], 16)
    ref = model(ids, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(ids, mask)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.train()(ids, mask).float().logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["softmax", "hrr-bundled"])
def test_dual_encoder_shares_one_encoder(name):
    dual, single = make(name, dual_encoder=True).eval(), make(name).eval()
    head_extra = 3 * 16 * 32  # the head's first Linear takes [u, v, u*v, u-v]: 4E inputs instead of E
    assert count_parameters(dual) == count_parameters(single) + head_extra
    (ids, mask), (ids2, mask2) = batch([10, 4], 10, seed=1), batch([7, 7], 7, seed=2)
    calls = []
    dual.final_norm.register_forward_hook(lambda *a: calls.append(1))
    logits = dual(ids, mask, ids2, mask2)
    assert len(calls) == 2  # both documents through the one encoder
    u, v = dual.encode(ids, mask), dual.encode(ids2, mask2)
    assert torch.allclose(logits, dual.head(torch.cat([u, v, u * v, u - v], -1)), atol=1e-6)
    assert torch.allclose(dual(ids2, mask2, ids, mask), dual.head(torch.cat([v, u, u * v, v - u], -1)), atol=1e-6)
    with pytest.raises(ValueError, match="input_ids_2"):
        dual(ids, mask)


def test_dual_encoder_gradients_from_the_second_document_reach_the_encoder():
    dual = make("softmax", dual_encoder=True)
    ids, mask = batch([6, 6], 6, seed=1)
    u = dual.encode(ids, mask).detach()  # document 1 held fixed: only document 2 carries gradient
    v = dual.encode(*batch([5, 2], 5, seed=2))
    dual.head(torch.cat([u, v, u * v, u - v], -1)).sum().backward()
    assert dual.blocks[0].qkv.weight.grad.abs().sum() > 0 and dual.token_emb.weight.grad.abs().sum() > 0


def test_sinusoidal_positions_are_fixed():
    model = make(learn_pos_emb=False)
    assert "pos_emb" not in dict(model.named_parameters()) and model.pos_emb.shape == (MAX_LEN, 16)
    assert make(learn_pos_emb=False, pooling_mode="CLS").pos_emb.shape == (MAX_LEN + 1, 16)


# ------------------------------------------------------------------ fidelity to the references (issue 13)

def test_head_activation_is_relu_as_lra_and_nystromformer_and_gelu_on_request():
    """LRA and Nystromformer's SCHead: Linear -> ReLU -> Linear; the Hrrformer's head uses GELU."""
    default = make()
    assert [type(m) for m in default.head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    gelu = make(head_activation="gelu")
    assert isinstance(gelu.head[1], torch.nn.GELU)
    with pytest.raises(ConfigError,
                       match=r"model\.head_activation=.tanh.: unknown activation; fix: use one of: relu, gelu"):
        make(head_activation="tanh")


def test_token_embeddings_start_at_std_002_like_the_learned_positions():
    """Nystromformer initialises word embeddings N(0, 0.02), as the positions: the position signal is not 50x
    weaker than the tokens' at the start. `embedding_init_std=None` keeps PyTorch's N(0, 1)."""
    model = make(vocab_size=400, embedding_dim=256, max_seq_len=400)
    tokens, positions = model.token_emb.weight.detach(), model.pos_emb.detach()
    assert abs(tokens.std().item() - 0.02) < 0.001 and abs(tokens.mean().item()) < 0.001
    assert abs(positions.std().item() - 0.02) < 0.001
    assert 0.9 < tokens.std().item() / positions.std().item() < 1.1
    torch_default = make(vocab_size=400, embedding_dim=256, max_seq_len=400, embedding_init_std=None)
    assert abs(torch_default.token_emb.weight.detach().std().item() - 1.0) < 0.02
    wider = make(vocab_size=400, embedding_dim=256, max_seq_len=400, embedding_init_std=0.1)
    assert abs(wider.token_emb.weight.detach().std().item() - 0.1) < 0.005


def test_the_config_defaults_are_the_references_choices():
    from lra.compose import compose_config
    from lra.config import validate
    from lra.run.train import build_model

    cfg = compose_config(["task=listops-small"])
    assert cfg.model.head_activation == "relu" and cfg.model.embedding_init_std == 0.02
    torch.manual_seed(0)
    model = build_model(validate(cfg))
    assert isinstance(model.head[1], torch.nn.ReLU)
    assert abs(model.token_emb.weight.detach().std().item() - 0.02) < 0.002
    gelu = build_model(validate(compose_config(["task=listops-small", "model.head_activation=gelu",
                                                "model.embedding_init_std=null"])))
    assert isinstance(gelu.head[1], torch.nn.GELU) and gelu.token_emb.weight.detach().std().item() > 0.9
