"""CUDA graphs for the backbone + FPN (reference.cuda_graphs): a graphed training step computes what the
eager one computes, batch norm statistics and accumulated gradients included.

On the CPU the capture is a stand-in with make_graphed_callables' contract and its memory behaviour
(warm-up runs that move BN statistics, static inputs, outputs and gradients rewritten by every replay,
gradients handed to autograd as views of that static memory), so the wrapper's own logic is tested
everywhere; the same comparison with the real capture runs where a GPU is."""

import copy

import pytest
import torch
from conftest import TINY, run_cli
from mrcnn_bench.adapters import get_adapter
from mrcnn_bench.adapters.base import UnsupportedConfig
from mrcnn_bench.harness.config.schema import builtin_config_dir, load_config
from mrcnn_bench.harness.records.results import load_run
from mrcnn_bench.reference_impl.config import ReferenceConfig
from mrcnn_bench.reference_impl.modeling import MaskRCNN
from test_reference_model import NUM_CLASSES, SIZE, _targets
from torch.utils._pytree import tree_flatten, tree_unflatten


def static_memory_capture(module, sample_args, num_warmup_iters=3, pool=None):
    """Eager, with torch.cuda.make_graphed_callables' memory semantics: one set of static tensors that
    each call overwrites, and parameter gradients returned as detached views of static memory."""
    params = tuple(p for p in module.parameters() if p.requires_grad)
    static_in = tuple(a.detach().clone() for a in sample_args)
    for _ in range(num_warmup_iters + 1):  # warm-up runs and the capture run execute the module
        module(*static_in)
    state = {}
    static_grads = [torch.zeros_like(p) for p in params]

    class Replayed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            for static, new in zip(static_in, inputs[: len(static_in)]):
                static.copy_(new)
            with torch.enable_grad():
                state["outputs"], state["spec"] = tree_flatten(module(*static_in))
            state.setdefault("static_out", [o.detach().clone() for o in state["outputs"]])
            for static, o in zip(state["static_out"], state["outputs"]):
                static.copy_(o.detach())
            return tuple(o.detach() for o in state["static_out"])

        @staticmethod
        def backward(ctx, *grads):
            new = torch.autograd.grad(state["outputs"], params, grads, allow_unused=True)
            for static, g in zip(static_grads, new):
                static.copy_(g if g is not None else torch.zeros_like(static))
            return (None,) * len(static_in) + tuple(g.detach() for g in static_grads)

    def call(*args):
        return tree_unflatten(list(Replayed.apply(*args, *params)), state["spec"])

    return call


def _pair(capture, *, max_shapes=2, device="cpu"):
    """(eager model, graphed model) with the same weights, BN (running statistics move) and nothing frozen."""
    torch.manual_seed(0)
    cfg = ReferenceConfig.like_torchvision(
        NUM_CLASSES, **SIZE, **{"backbone.norm": "BN", "backbone.freeze_at": 0}
    )
    eager = MaskRCNN.from_config(cfg).to(device).train()
    graphed = copy.deepcopy(eager).enable_cuda_graphs(max_shapes=max_shapes, capture=capture)
    return eager, graphed


def _batch(h, w, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(2)]
    targets = []
    for t in _targets():  # boxes inside any of the sizes used here; masks cut to the image
        masks = torch.zeros(len(t["boxes"]), h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(t["boxes"].clamp(max=min(h, w) - 1).int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        targets.append(
            {
                "boxes": t["boxes"].clamp(max=min(h, w) - 1).to(device),
                "labels": t["labels"].to(device),
                "masks": masks.to(device),
            }
        )
    return images, targets


def _accumulated_step(model, batches, seed=3):
    """Forward + backward over micro-batches, gradients accumulated: (losses of each, named gradients)."""
    model.zero_grad(set_to_none=True)
    losses = []
    for i, (images, targets) in enumerate(batches):
        torch.manual_seed(seed + i)
        out = model(images, targets)
        sum(out.values()).backward()
        losses.append({k: v.detach() for k, v in out.items()})
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(eager, graphed, batches, rtol, atol):
    expected_losses, expected_grads = _accumulated_step(eager, batches)
    got_losses, got_grads = _accumulated_step(graphed, batches)
    for e, g in zip(expected_losses, got_losses):
        for k in e:
            torch.testing.assert_close(g[k], e[k], rtol=rtol, atol=atol, msg=k)
    assert expected_grads.keys() == got_grads.keys() and len(got_grads) > 50
    for name, e in expected_grads.items():
        torch.testing.assert_close(
            got_grads[name], e, rtol=rtol, atol=atol * max(1.0, e.abs().max().item()), msg=name
        )
    for (name, e), g in zip(eager.named_buffers(), graphed.buffers()):
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol, msg=name)


@pytest.mark.e2e
def test_graphed_steps_equal_eager_ones_with_accumulation_and_two_shapes():
    eager, graphed = _pair(static_memory_capture)
    small, large = (128, 160), (160, 128)
    # two micro-batches of one shape: the second replay rewrites the static gradients the first left
    _assert_same_step(eager, graphed, [_batch(*small, 0), _batch(*small, 1)], rtol=1e-5, atol=1e-6)
    # a second shape gets its own capture; then both shapes replay within one accumulated step
    _assert_same_step(eager, graphed, [_batch(*large, 2)], rtol=1e-5, atol=1e-6)
    _assert_same_step(eager, graphed, [_batch(*small, 3), _batch(*large, 4)], rtol=1e-5, atol=1e-6)
    stats = graphed.graphed_backbone.stats
    assert stats["captured"] == 2 and stats["replayed"] == 5 and stats["eager"] == 0


@pytest.mark.e2e
def test_shapes_past_the_limit_evaluation_and_copies_run_eagerly():
    eager, graphed = _pair(static_memory_capture, max_shapes=1)
    _assert_same_step(eager, graphed, [_batch(128, 160, 0)], rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="1 input shapes captured"):
        _assert_same_step(eager, graphed, [_batch(160, 128, 1)], rtol=1e-5, atol=1e-6)
    stats = graphed.graphed_backbone.stats
    assert stats["captured"] == 1 and stats["eager"] == 1
    graphed.eval()
    eager.eval()
    images, _ = _batch(128, 160, 2)
    with torch.no_grad():
        expected, got = eager(images), graphed(images)
    assert stats["eager"] == 2 and stats["captured"] == 1
    for e, g in zip(expected, got):
        torch.testing.assert_close(g["boxes"], e["boxes"])
    # the FLOP counter's deep copy runs eagerly: graphs belong to the original's memory
    clone = copy.deepcopy(graphed).train()
    assert clone.graphed_backbone.module is clone.backbone and clone.graphed_backbone.max_shapes == 0
    assert "backbone.body.conv1.weight" in clone.state_dict()  # parameter names as without graphs


def test_real_capture_needs_cuda_and_the_harness_says_so(monkeypatch):
    from mrcnn_bench.reference_impl import ops

    monkeypatch.setattr(ops, "CUDA_KERNELS", ops.NATIVE)  # as an extension built with nvcc
    model = MaskRCNN.from_config(
        ReferenceConfig.like_torchvision(NUM_CLASSES, **SIZE, **{"perf.cuda_graphs": True})
    ).train()
    assert model.graphed_backbone is not None and model.graphed_backbone.max_shapes == 16
    with pytest.raises(RuntimeError, match="CUDA graphs need the model on a CUDA device"):
        model(*_batch(128, 160, 0))
    cfg = load_config(
        builtin_config_dir() / "cpu_small.yaml",
        {"reference.cuda_graphs": True, "reference.cuda_graph_shapes": 3},
    )
    # on the CPU the lever falls back to the eager backbone, and says so (the run is not failed for it)
    native = get_adapter("reference").translate(cfg)
    assert not native.model.perf.cuda_graphs
    assert native.fallbacks == [
        {"lever": "reference.cuda_graphs", "why": "CUDA graphs need CUDA, the run is on cpu"}
    ]
    native = get_adapter("reference").translate(cfg.with_overrides({"benchmark.device": "cuda"}))
    assert native.model.perf.cuda_graphs and native.model.perf.cuda_graph_shapes == 3 and not native.fallbacks


def test_an_extension_without_cuda_kernels_is_not_timed_on_cuda(monkeypatch):
    """The pure-PyTorch ops would stand in for the native ones unseen: the reference refuses to be
    benchmarked on CUDA then, and says how to rebuild."""
    from mrcnn_bench.reference_impl import ops

    monkeypatch.setattr(ops, "NATIVE", True)
    monkeypatch.setattr(ops, "CUDA_KERNELS", False)
    cfg = load_config(builtin_config_dir() / "cpu_small.yaml", {"benchmark.device": "cuda"})
    with pytest.raises(UnsupportedConfig, match="built without CUDA kernels.*rebuild with CUDA_HOME set"):
        get_adapter("reference").translate(cfg)
    ok, why = get_adapter("reference").available()
    assert ok and "cpu only" in why
    assert (
        get_adapter("reference").translate(cfg.with_overrides({"benchmark.device": "cpu"})).model is not None
    )


@pytest.mark.cuda
def test_real_cuda_graphs_equal_eager_on_a_gpu():
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    eager, graphed = _pair(None, device="cuda")
    small, large = (128, 160), (160, 128)
    _assert_same_step(
        eager, graphed, [_batch(*small, 0, "cuda"), _batch(*small, 1, "cuda")], rtol=1e-4, atol=1e-5
    )
    _assert_same_step(
        eager, graphed, [_batch(*small, 3, "cuda"), _batch(*large, 4, "cuda")], rtol=1e-4, atol=1e-5
    )
    stats = graphed.graphed_backbone.stats
    assert stats["captured"] == 2 and stats["eager"] == 0


@pytest.mark.e2e
def test_levers_that_cannot_act_here_fall_back_with_one_warning_each_and_run_json_says_so(
    synth_root, tmp_path
):
    """CUDA graphs on the CPU, and torch.compile with no working C++ compiler (CXX pointing nowhere):
    the run finishes eagerly, each lever warns once, and run.json records both fallbacks."""
    out = run_cli(
        "run",
        "--impl",
        "reference",
        "--config",
        "cpu_small",
        *TINY,
        "--data",
        synth_root,
        "--out",
        tmp_path,
        "--run-id",
        "fb",
        "--set",
        "reference.cuda_graphs=true",
        "--set",
        "reference.compile_heads=true",
        env={"CXX": "/nonexistent/c++"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    record = load_run(tmp_path / "fb" / "reference")
    assert record["status"] == "ok"
    fallbacks = record["adapter"]["lever_fallbacks"]
    assert [f["lever"] for f in fallbacks] == ["reference.cuda_graphs"] + [
        "reference.compile_heads"
    ] * 2  # box and mask heads
    assert "CUDA graphs need CUDA" in fallbacks[0]["why"] and "C++ compiler" in fallbacks[1]["why"]
    assert sorted(f["module"] for f in fallbacks[1:]) == ["BoxHead", "MaskHead"]
    assert out.stderr.count("reference.cuda_graphs: CUDA graphs need CUDA") == 1
    assert out.stderr.count("reference.compile_heads: torch.compile failed") == 1
