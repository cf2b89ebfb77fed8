"""The cached launch path's keys (CPU, with a stand-in for a Triton JIT function and its compiled kernel)."""

import inspect

import pytest
import torch
from triton.runtime.errors import OutOfResources

from hf_adasplash.ops import launch as L


class Param:
    def __init__(self, name, constexpr=False, default=inspect.Parameter.empty, dns=False, annotation=""):
        self.name, self.is_constexpr, self.default = name, constexpr, default
        self.has_default = default is not inspect.Parameter.empty
        self.do_not_specialize, self.do_not_specialize_on_alignment = dns, False
        self.annotation = annotation


class FakeJit:
    """Records JIT launches; each returns a compiled stand-in that records its own launches."""

    def __init__(self, params):
        self.params, self.jit_launches, self.runs = params, [], []

    def __getitem__(self, grid):
        def run(**kwargs):
            self.jit_launches.append(dict(kwargs))
            return Compiled(self, len(self.jit_launches))
        return run


class Compiled:
    def __init__(self, jit, n):
        self.jit, self.n = jit, n

    def __getitem__(self, grid):
        return lambda *values: self.jit.runs.append((self.n, grid, values))


@pytest.fixture
def jit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return FakeJit([Param("x"), Param("n", dns=True), Param("stride"), Param("scale"), Param("BD", constexpr=True),
                    Param("FLAG", constexpr=True, default=False)])


def test_the_compiled_kernel_is_reused_with_values_in_signature_order(jit):
    launcher = L.CachedLauncher(jit)
    x = torch.zeros(64)
    launcher((4, 2), x=x, n=100, stride=32, scale=0.5, BD=64, num_warps=4)
    launcher((4, 2), x=x, n=101, stride=48, scale=0.7, BD=64, num_warps=4)  # n is not specialised; 48 % 16 == 0
    assert len(jit.jit_launches) == 1
    assert jit.runs == [(1, (4, 2, 1), (x, 101, 48, 0.7, 64, False))]  # the default of FLAG filled in


@pytest.mark.parametrize("change", [
    {"x": torch.zeros(65)[1:]},  # 4-byte offset: no longer 16-byte aligned
    {"x": torch.zeros(64, dtype=torch.float16)},
    {"stride": 1},  # Triton makes a 1 a constant
    {"stride": 40},  # not divisible by 16
    {"n": 2**40},  # a 64-bit integer
    {"BD": 128},
    {"FLAG": True},
    {"num_warps": 8},
])
def test_anything_triton_specialises_on_compiles_again(jit, change):
    launcher = L.CachedLauncher(jit)
    args = {"x": torch.zeros(64), "n": 100, "stride": 32, "scale": 0.5, "BD": 64, "num_warps": 4}
    launcher((1,), **args)
    launcher((1,), **{**args, **change})
    assert len(jit.jit_launches) == 2 and jit.runs == []


def test_the_generated_key_is_the_generic_key(jit):
    # each call site gets a key function generated for its argument names and types; a type it was not generated for
    # (here an int scale) falls back to the generic rules, which give the same key
    launcher = L.CachedLauncher(jit)
    base = {"x": torch.zeros(64), "n": 100, "stride": 32, "scale": 0.5, "BD": 64, "num_warps": 4}
    for change in [{}, {"x": torch.zeros(65)[1:]}, {"x": torch.zeros(8, dtype=torch.float16)}, {"stride": 1},
                   {"stride": 40}, {"stride": -(2**33)}, {"n": 2**40}, {"n": 2**63}, {"BD": 128}, {"FLAG": True},
                   {"num_warps": 8, "num_stages": 2}, {"scale": 2}]:
        kw = {**base, **change}
        want = [kw[n] if n in kw else launcher.defaults[n] for n in launcher.names]
        key, values = launcher.key_and_values(kw)
        assert key == launcher.key(want, kw), change
        assert len(values) == len(want) and all(a is b for a, b in zip(values, want)), change
    assert len(launcher._fast) == 3  # the base names, with FLAG, with num_stages


def test_arg_key_rules():
    assert L.arg_key(7, True, True, True) == 7
    assert L.arg_key(True, False, True, True) == "u1"
    assert L.arg_key(32, False, True, True) == ("i32", False, True)
    assert L.arg_key(32, False, True, False) == ("i32", False, False)
    assert L.arg_key(2**33, False, False, True) == "i64"
    assert L.arg_key(2.5, False, True, True) == "fp32"
    with pytest.raises(TypeError, match="no launch key"):
        L.arg_key("a", False, True, True)


def test_launch_takes_the_jit_unless_asked_and_on_cuda(jit, monkeypatch):
    args = {"x": torch.zeros(64), "n": 1, "stride": 32, "scale": 0.5, "BD": 64}
    monkeypatch.delenv(L.ENV, raising=False)
    L.launch(jit, (1,), **args)
    L.launch(jit, (1,), **args)
    assert len(jit.jit_launches) == 2 and jit.runs == []
    monkeypatch.setenv(L.ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(L, "_launchers", {})
    L.launch(jit, (1,), **args)
    L.launch(jit, (1,), **args)
    assert len(jit.jit_launches) == 3 and len(jit.runs) == 1
    jit.params.append(Param("annotated", annotation="i32", default=3))  # a rule of its own: always the JIT
    monkeypatch.setattr(L, "_launchers", {})
    L.launch(jit, (1,), **args)
    L.launch(jit, (1,), **args)
    assert len(jit.jit_launches) == 5 and len(jit.runs) == 1


def test_a_plan_replays_its_bound_kernel_with_the_new_tensors(jit, monkeypatch):
    from hf_adasplash.ops.plans import Plan, Step

    monkeypatch.delenv(L.ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(L, "_launchers", {})
    plan = Plan([("x", lambda b: torch.zeros(64))], [Step(jit, (4, 2), {"n": 100, "stride": 32, "scale": 0.5, "BD": 64},
                                                          {"x": "x"})], cuda=True)
    first = plan.allocate({})
    plan.run(first, L.launch)  # through the JIT (compiles), then bound
    assert len(jit.jit_launches) == 1 and jit.runs == [] and plan.steps[0].bound
    second = plan.allocate({})
    plan.run(second, L.launch)
    assert len(jit.jit_launches) == 1
    assert len(jit.runs) == 1 and jit.runs[0][2][0] is second["x"] and jit.runs[0][1:] == ((4, 2, 1),
                                                                                         (second["x"], 100, 32, 0.5,
                                                                                          64, False))
    # a tensor of other alignment than the bound key's: back through launch, which compiles that variant
    plan.run({"x": torch.zeros(65)[1:]}, L.launch)
    assert len(jit.jit_launches) == 2 and len(jit.runs) == 1
    # a replaced launch function (a spy, compile-ahead) or HF_ADASPLASH_CACHED_LAUNCH=0 sees every launch
    seen = []
    plan.run(plan.allocate({}), lambda fn, grid, **kw: seen.append(kw))
    monkeypatch.setenv(L.ENV, "0")
    plan.run(plan.allocate({}), L.launch)
    assert len(seen) == 1 and len(jit.jit_launches) == 3 and len(jit.runs) == 1


def test_a_plan_step_takes_no_fixed_tensor():
    from hf_adasplash.ops.plans import Step

    with pytest.raises(TypeError, match="must be named in `tensors`"):
        Step(object(), (1,), {"x": torch.zeros(1)}, {})


class SmallSharedMemoryJit(FakeJit):
    """A kernel whose shared memory fits the device only at ``fits`` stages or fewer (Triton refuses the launch)."""

    def __init__(self, params, fits, resource="shared memory"):
        super().__init__(params)
        self.fits, self.resource, self.tried = fits, resource, []

    def __getitem__(self, grid):
        run = super().__getitem__(grid)

        def checked(**kwargs):
            self.tried.append(kwargs.get("num_stages"))
            if kwargs.get("num_stages", 3) > self.fits:
                raise OutOfResources(80 * 1024 * kwargs["num_stages"], 227 * 1024, self.resource)
            return run(**kwargs)
        return checked


@pytest.mark.parametrize("cached", ["1", "0"])
def test_a_launch_drops_pipeline_stages_until_its_shared_memory_fits(jit, monkeypatch, cached):
    # Triton 3.8+ compiles the forward's per-class loops with their own stage buffers (bench/NOTES.md v21): a launch
    # Triton refuses for shared memory runs again with one stage less, remembered per kernel and settings
    monkeypatch.setenv(L.ENV, cached)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(L, "_launchers", {})
    monkeypatch.setattr(L, "_stages_that_fit", {})
    small = SmallSharedMemoryJit(jit.params, fits=2)
    args = {"x": torch.zeros(64), "n": 1, "stride": 32, "scale": 0.5, "BD": 64, "num_warps": 8, "num_stages": 4}
    with pytest.warns(RuntimeWarning, match="shared memory at 4 stages.*runs with 2"):
        L.launch(small, (1,), **args)
    assert small.tried == [4, 3, 2] and small.jit_launches[-1]["num_stages"] == 2
    L.launch(small, (1,), **args)  # remembered (JIT path) or the compiled kernel reused (cached path)
    assert small.tried == [4, 3, 2] + ([] if cached == "1" else [2])
    with pytest.warns(RuntimeWarning):  # other settings: tried from their own stages again
        L.launch(small, (1,), **{**args, "BD": 128})
    assert small.tried[-3:] == [4, 3, 2]


def test_a_launch_refused_for_other_resources_or_at_one_stage_raises(jit, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(L, "_launchers", {})
    monkeypatch.setattr(L, "_stages_that_fit", {})
    args = {"x": torch.zeros(64), "n": 1, "stride": 32, "scale": 0.5, "BD": 64, "num_stages": 3}
    with pytest.raises(OutOfResources, match="registers"):
        L.launch(SmallSharedMemoryJit(jit.params, fits=1, resource="registers"), (1,), **args)
    never = SmallSharedMemoryJit(jit.params, fits=0)
    with pytest.raises(OutOfResources, match="shared memory"):
        L.launch(never, (1,), **args)
    assert never.tried == [3, 2, 1]
