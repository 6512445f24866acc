"""Model core: context layout, masking, compressors, H attention, temporal history, gradients."""

import numpy as np
import pytest
import torch
from conftest import small_config

from sage_hl_ros.core.compressors import AttentionCompressor, build_compressor
from sage_hl_ros.core.config import COMPRESSORS, MODALITIES, ConfigError, SageConfig
from sage_hl_ros.core.l_module import ActionSmoother
from sage_hl_ros.core.layout import GROUPS, SLICE_NAMES, group_slice, slice_dims, slice_of
from sage_hl_ros.core.observation import ARRAY_FIELDS, Observation, ObservationSchema, aa_weights, resize_aa
from sage_hl_ros.core.synthetic import SyntheticReachTask
from sage_hl_ros.core.system import build_model


def _fitted(cfg, seed=0):
    model = build_model(cfg)
    task = SyntheticReachTask(cfg.observation, seed=seed)
    batch = task.sequences(8, 3)
    model.fit_normalizer(batch.obs.joint_position, batch.obs.joint_velocity, batch.obs.tactile,
                         batch.action.flatten(0, 1))
    return model.eval(), task, batch


def test_slice_names_and_sizes():
    expected = {
        "sensory": {"visual": 512, "depth": 256, "audio": 256, "tactile": 256, "proprioceptive": 256},
        "semantic": {"objects": 256, "affordances": 256, "relationships": 256, "intentions": 256},
        "physical": {"dynamics": 256, "materials": 256, "constraints": 256},
        "temporal": {"immediate": 256, "historical": 256, "predictive": 256},
    }
    names = [f"{g}.{n}" for g, slices in expected.items() for n in slices]
    assert list(SLICE_NAMES) == names
    for g, slices in expected.items():
        for n, dims in slices.items():
            assert slice_dims(f"{g}.{n}") == dims
    sizes = {g: group_slice(g).stop - group_slice(g).start for g in GROUPS}
    assert sizes == {"sensory": 1536, "semantic": 1024, "physical": 768, "temporal": 768}
    assert slice_of("temporal.predictive") == slice(4096 - 256, 4096)
    # slices tile the context without gaps or overlaps
    covered = np.zeros(4096, dtype=int)
    for n in SLICE_NAMES:
        covered[slice_of(n)] += 1
    assert (covered == 1).all()
    with pytest.raises(KeyError, match="unknown context slice"):
        slice_of("sensory.smell")


def test_context_is_addressable_by_name(small_cfg):
    model, task, batch = _fitted(small_cfg)
    _, ctx, _ = model.encode(batch.obs.index(slice(0, 2)))
    assert ctx.vector.shape == (2, 4096)
    assert torch.equal(ctx.slice("physical.dynamics"), ctx.vector[:, slice_of("physical.dynamics")])
    assert ctx.tokens().shape == (2, 16, 256)
    for name in SLICE_NAMES:  # no slice is constant filler
        assert ctx.slice(name).abs().sum() > 0, name


@pytest.mark.parametrize("modality", MODALITIES)
def test_masking_a_modality_changes_only_its_slice(small_cfg, modality):
    model, _, batch = _fitted(small_cfg)
    obs = batch.obs.index(slice(0, 2))
    _, full, _ = model.encode(obs)
    _, masked, _ = model.encode(obs.masked(modality))
    own = {"visual": "sensory.visual", "depth": "sensory.depth", "audio": "sensory.audio",
           "tactile": "sensory.tactile", "proprio": "sensory.proprioceptive"}[modality]
    assert torch.count_nonzero(masked.slice(own)) == 0
    assert not masked.modality_present(modality).any()
    for other in ("sensory.visual", "sensory.depth", "sensory.audio", "sensory.tactile", "sensory.proprioceptive"):
        if other != own:
            assert torch.allclose(masked.slice(other), full.slice(other), atol=1e-6), other
    # derived groups see the loss
    assert not torch.allclose(masked.group("temporal"), full.group("temporal"))


def test_missing_and_malformed_inputs_are_masked_never_raised(small_cfg):
    model, task, _ = _fitted(small_cfg)
    j = small_cfg.observation.num_joints
    bad = Observation(
        image=np.zeros((10, 10), dtype=np.uint8),  # wrong rank
        depth=np.full((40, 40), np.nan, dtype=np.float32),  # all invalid depth is allowed (NaN -> 0)
        audio=np.array([np.inf, 0.0], dtype=np.float32),
        tactile=np.zeros(3, dtype=np.float32),  # wrong taxel count
        joint_position=np.full(j, np.nan),
    )
    batch, problems = model.schema.prepare(bad)
    assert set(problems) == {"visual", "audio", "tactile", "proprio"}
    assert "non-finite" in problems["audio"] and "expected 16 values" in problems["tactile"]
    assert batch.mask.tolist() == [[False, True, False, False, False]]
    z, ctx, _ = model.encode(batch)
    assert torch.isfinite(z).all() and torch.isfinite(ctx.vector).all()
    nothing, problems = model.schema.prepare(Observation())
    assert len(problems) == 5 and not nothing.mask.any()
    z, _, _ = model.encode(nothing)
    assert z.shape == (1, 256) and torch.isfinite(z).all()


def test_implausible_values_are_masked_with_a_reason(small_cfg):
    # Finite but absurd values (a 1e30 taxel, a 1e308 rad joint) overflow float32 inside the
    # encoders; the schema masks them by observation.input_ranges instead.
    model, _, _ = _fitted(small_cfg)
    j = small_cfg.observation.num_joints
    bad = Observation(audio=np.full(64, 50.0, np.float32), tactile=np.full(16, 1e30, np.float32),
                      joint_position=np.full(j, 1e308))
    batch, problems = model.schema.prepare(bad)
    assert "audio out of range (64 of 64 values): 50 (plausible |value| <= 10)" == problems["audio"]
    assert "tactile out of range (16 of 16 values): 1e+30" in problems["tactile"]
    assert "joint position out of range" in problems["proprio"] and " rad " in problems["proprio"]
    assert not batch.mask.any()
    vel = Observation(joint_position=np.zeros(j), joint_velocity=np.full(j, 1e4))
    _, problems = model.schema.prepare(vel)
    assert "joint velocity out of range" in problems["proprio"]
    z, _, state = model.encode(model.schema.prepare(bad)[0])
    assert torch.isfinite(z).all() and torch.isfinite(state.history).all()


def test_depth_pixels_outside_the_valid_range_are_invalid_not_the_image(small_cfg):
    model, _, _ = _fitted(small_cfg)
    depth = np.full((32, 32), 2.0, np.float32)
    depth[0, :4] = [np.nan, np.inf, -1.0, 1e30]  # NaN, inf, negative and absurd pixels
    batch, problems = model.schema.prepare(Observation(depth=depth))
    assert "depth" not in problems and batch.mask[0, 1]
    d = batch.depth[0, 0]
    assert torch.equal(d[0, :4], torch.zeros(4))  # invalid pixels are 0, like a REP 118 invalid reading
    assert torch.allclose(d[1:], torch.full_like(d[1:], 2.0 / small_cfg.observation.depth_max_m))


def test_prepare_resizes_camera_and_pads_audio(small_cfg):
    model, task, _ = _fitted(small_cfg)
    obs = task.observation(task.sample_goal(1)[0], torch.zeros(small_cfg.observation.num_joints))
    obs.image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    obs.audio = obs.audio[:100]
    batch, problems = model.schema.prepare(obs)
    assert problems == {}
    assert batch.image.shape == (1, 3, 32, 32) and batch.audio.shape == (1, 1024)
    assert torch.count_nonzero(batch.audio[0, :-100]) == 0


@pytest.mark.parametrize("src,dst", [((480, 640), (32, 32)), ((64, 64), (32, 32)),  # downscale
                                     ((17, 23), (32, 40)), ((5, 7), (90, 3)),  # upscale, mixed
                                     ((100, 37), (33, 13)), ((45, 45), (32, 32)), ((32, 32), (32, 20))])
def test_numpy_resize_equals_torch_antialiased_bilinear(src, dst):
    import torch.nn.functional as F

    x = np.random.default_rng(sum(src + dst)).random((3, *src), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False,
                         antialias=True)[0].numpy()
    got = resize_aa(x, *dst)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert aa_weights(src[0], dst[0]) is aa_weights(src[0], dst[0])  # cached per size pair
    assert resize_aa(x, *src) is x


def test_prepare_wraps_the_numpy_arrays(small_cfg):
    from sage_hl_ros.deploy.manifest import OBSERVATION_INPUTS

    assert ARRAY_FIELDS == OBSERVATION_INPUTS  # the exported graph's observation inputs
    schema = ObservationSchema(small_cfg.observation)
    rng = np.random.default_rng(1)
    j = small_cfg.observation.num_joints
    obs = Observation(image=rng.integers(0, 255, (48, 60, 3), dtype=np.uint8),
                      depth=rng.uniform(0.2, 3.0, (40, 50)).astype(np.float32),
                      audio=rng.uniform(-1, 1, 300).astype(np.float32), tactile=None,
                      joint_position=np.linspace(-1, 1, j), joint_velocity=np.zeros(j))
    arrays, problems = schema.prepare_arrays(obs)
    batch, problems_t = schema.prepare(obs)
    assert problems == problems_t == {"tactile": "missing"}
    for name in ARRAY_FIELDS:
        assert arrays[name].shape[0] == 1 and arrays[name].dtype == (bool if name == "mask" else np.float32)
        assert np.array_equal(getattr(batch, name).numpy(), arrays[name]), name
    assert arrays["mask"].tolist() == [[True, True, True, False, True]]
    assert not np.shares_memory(arrays["joint_position"], obs.joint_position)


def test_observation_numpy_path_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from sage_hl_ros.core.observation import Observation, ObservationSchema\n"
            "from sage_hl_ros.core.context_step import ContextStep\n"
            "from sage_hl_ros.core.config import SageConfig\n"
            "s = ObservationSchema(SageConfig.from_dict({}).observation)\n"
            "a, p = s.prepare_arrays(Observation(image=np.zeros((10, 12, 3), np.uint8)))\n"
            "assert a['mask'][0, 0]\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("strategy", COMPRESSORS)
def test_every_compressor_returns_b_by_256(strategy):
    cfg = small_config(compressor=strategy).model
    comp = build_compressor(cfg)
    for b in (1, 5):
        tokens = torch.randn(b, 16, 256)
        comp.train()
        out = comp(tokens)
        assert out.z.shape == (b, 256) and out.kl.shape == (b,)
        comp.eval()
        assert torch.equal(comp(tokens).z, comp(tokens).z)  # deterministic in eval
    if strategy in ("bottleneck", "hybrid"):
        assert (out.kl > 0).all()


def test_hierarchical_rates_must_sum_to_latent():
    with pytest.raises(ConfigError, match="hierarchical_dims"):
        SageConfig.from_dict({"model": {"hierarchical_dims": {"sensory": 100, "semantic": 64, "physical": 48,
                                                              "temporal": 48}}})


def test_h_module_attention_mixes_tokens(small_cfg):
    model, _, batch = _fitted(small_cfg)
    _, ctx, _ = model.encode(batch.obs.index(slice(0, 1)))
    with torch.no_grad():
        base = model.h_module(ctx)
        changed = ctx.vector.clone()
        changed[:, slice_of("sensory.audio")] += torch.randn(1, 256)  # token 3 only (not a constant: LayerNorm)
        out = model.h_module(type(ctx)(changed, ctx.mask))
    delta = (out - base).abs().amax(dim=-1)[0]
    assert delta[3] > 0
    others = [t for t in range(16) if t != 3]
    assert (delta[others] > 1e-4).all(), "attention did not carry token 3 into the other tokens"


def test_attention_latents_attend_differently():
    cfg = small_config(compressor="attention").model
    comp = AttentionCompressor(cfg).eval()
    tokens = torch.randn(2, 16, 256)
    comp(tokens, keep_attention=True)
    weights = comp.last_attention  # (B, latents, tokens)
    assert weights.shape == (2, cfg.attention_latents, 16)
    assert torch.allclose(weights.sum(-1), torch.ones(2, cfg.attention_latents))
    pairwise = (weights[:, :, None, :] - weights[:, None, :, :]).abs().sum(-1)
    off_diag = pairwise[:, ~torch.eye(cfg.attention_latents, dtype=torch.bool)]
    assert (off_diag > 1e-3).all()


def test_temporal_history_is_carried_and_not_constant(small_cfg):
    model, task, batch = _fitted(small_cfg)
    obs = batch.obs.index(slice(0, 1))
    state = model.initial_state(1)
    historical = []
    for _ in range(4):  # the same observation: only the history differs
        _, ctx, state = model.encode(obs, state)
        historical.append(ctx.slice("temporal.historical"))
    for a, b in zip(historical, historical[1:], strict=False):
        assert not torch.allclose(a, b, atol=1e-5)
    assert int(state.valid.sum()) == 4
    # the state is the caller's: a fresh state reproduces the first step exactly
    _, ctx, _ = model.encode(obs, model.initial_state(1))
    assert torch.equal(ctx.slice("temporal.historical"), historical[0])


def test_gradients_reach_every_slice_and_parameter(small_cfg):
    model, task, _ = _fitted(small_cfg)
    model.train()
    batch = task.sequences(4, 3)
    # one sample without audio, so the "missing modality" embedding is exercised too
    batch.obs.audio[0] = 0.0
    batch.obs.mask[0, MODALITIES.index("audio")] = False
    terms = model.losses(batch)
    terms["total"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []
    # gradient w.r.t. each context slice, through H, compressor and L (behaviour cloning alone)
    model.zero_grad()
    out = model.forward_sequence(batch)
    ctx = out["context"]
    bc = out["action_norm"].square().mean() + model.decoder(out["z"]).square().mean()
    (grad,) = torch.autograd.grad(bc, ctx)
    for name in SLICE_NAMES:
        assert grad[:, slice_of(name)].abs().sum() > 0, name


def test_seeded_determinism():
    a, b = build_model(small_config()), build_model(small_config())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    c = build_model(SageConfig.from_dict({**small_config().to_dict(), "seed": 1}))
    assert not torch.equal(a.l_module.net[0].weight, c.l_module.net[0].weight)


def test_action_chunk_and_absolute_mode():
    cfg = small_config(action_chunk=4, action_mode="absolute")
    model, task, batch = _fitted(cfg)
    obs = batch.obs.index(slice(0, 3))
    z, _, _ = model.encode(obs)
    targets = model.act(z, obs.joint_position, obs.joint_velocity)
    assert targets.shape == (3, 4, cfg.observation.num_joints)
    # absolute targets are clipped to the range seen when fitting the normaliser
    assert (targets <= model.normalizer.action_max + 1e-6).all()
    assert (targets >= model.normalizer.action_min - 1e-6).all()
    model.train()
    terms = model.losses(task.sequences(2, 2, chunk=4))
    assert torch.isfinite(terms["total"])


def test_action_smoother_is_per_instance():
    a, b = ActionSmoother(0.5), ActionSmoother(0.5)
    assert np.allclose(a(np.array([1.0])), [1.0])
    assert np.allclose(a(np.array([0.0])), [0.5])
    assert np.allclose(b(np.array([0.0])), [0.0])  # b never saw a's history
    a.reset()
    assert np.allclose(a(np.array([2.0])), [2.0])
    with pytest.raises(ValueError):
        ActionSmoother(0.0)


def test_hf_visual_backbone_from_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    vit = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8)
    transformers.ViTModel(vit).save_pretrained(tmp_path / "tiny_vit")
    cfg = small_config(visual_backbone=str(tmp_path / "tiny_vit"))
    model, task, batch = _fitted(cfg)
    _, ctx, _ = model.encode(batch.obs.index(slice(0, 2)))
    assert ctx.slice("sensory.visual").shape == (2, 512)
    assert ctx.slice("sensory.visual").abs().sum() > 0
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_model(small_config(visual_backbone=str(tmp_path / "absent")))


@pytest.mark.parametrize("mode,chunk,features", [("delta", 1, ["position"]), ("absolute", 3, ["position", "velocity"])])
def test_numpy_l_policy_matches_torch(mode, chunk, features):
    from sage_hl_ros.core.fast_policy import NumpyLPolicy

    cfg = small_config(action_mode=mode, action_chunk=chunk)
    cfg.observation.proprio_features = features
    model, task, batch = _fitted(cfg)
    obs = batch.obs.index(slice(0, 4))
    z, _, _ = model.encode(obs)
    reference = model.act(z, obs.joint_position, obs.joint_velocity).numpy()
    fast = NumpyLPolicy.from_model(model)
    for i in range(4):
        got = fast.act(z[i].numpy(), obs.joint_position[i].numpy(), obs.joint_velocity[i].numpy())
        assert got.shape == (chunk, cfg.observation.num_joints)
        np.testing.assert_allclose(got, reference[i], rtol=1e-4, atol=1e-5)


def test_numpy_l_policy_from_checkpoint_is_torch_free_and_equal(tmp_path):
    """The control node's load path: safetensors -> numpy, no torch model built, same numbers."""
    from sage_hl_ros.core.checkpoint import save_checkpoint
    from sage_hl_ros.core.fast_policy import NumpyLPolicy

    cfg = small_config(action_chunk=2)
    model, _, batch = _fitted(cfg)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, info = NumpyLPolicy.from_checkpoint(tmp_path / "ckpt")
    assert info.joint_names == tuple(cfg.observation.joint_names) and info.action_chunk == 2
    assert len(info.sha256) == 64
    ref = NumpyLPolicy.from_model(model)
    obs = batch.obs.index(slice(0, 3))
    z, _, _ = model.encode(obs)
    for i in range(3):
        args = (z[i].detach().numpy(), obs.joint_position[i].numpy(), obs.joint_velocity[i].numpy())
        np.testing.assert_array_equal(loaded.act(*args), ref.act(*args))
