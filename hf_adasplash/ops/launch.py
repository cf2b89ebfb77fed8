"""Kernel launches past the Triton JIT's per-call argument binding (on by default on CUDA).

A JIT launch of our kernels (47-74 arguments) cost 52-144 us of host time on the H100 host (triton 3.6); the compiled
kernel's own launcher took 14-27 us on the same arguments (``bench/host_h100_v14.txt``). Each launch here looks up the
compiled kernel itself, keyed on everything Triton specialises a compilation on (a key function generated per call
site from its argument names and types), and calls its launcher; a new key goes through the JIT once (compiling or
loading it). Bit-identical to the JIT's launches; a SmolLM2 training step took 164 ms with it against 172 ms without
(H100, bench/NOTES.md v16). ``HF_ADASPLASH_CACHED_LAUNCH=0`` takes the JIT for every launch.
"""

from __future__ import annotations

import os
import warnings

import torch
import triton
from triton.runtime.errors import OutOfResources

ENV = "HF_ADASPLASH_CACHED_LAUNCH"
_I32 = (-(2**31), 2**31 - 1)


def _int_type(v: int) -> str:
    return "i32" if _I32[0] <= v <= _I32[1] else ("u64" if v >= 2**63 else "i64")


def arg_key(v, is_constexpr: bool, specialize: bool, align: bool):
    """What Triton's compilation depends on for one argument (its ``specialize_impl`` rules, triton 3.6-3.9)."""
    if is_constexpr or v is None:
        return v
    if isinstance(v, bool):
        return "u1"
    if isinstance(v, int):
        if not specialize:
            return _int_type(v)
        return (_int_type(v), v == 1, align and v % 16 == 0)
    if isinstance(v, float):
        return "fp32"
    if isinstance(v, torch.Tensor):
        return (v.dtype, align and v.data_ptr() % 16 == 0)
    raise TypeError(f"no launch key for a {type(v).__name__} argument")


class CachedLauncher:
    """``launcher(grid, **kwargs)`` launches ``jit_fn[grid](**kwargs)``, reusing the compiled kernel per key."""

    def __init__(self, jit_fn):
        self.jit = jit_fn
        params = jit_fn.params
        self.names = [p.name for p in params]
        self.known = set(self.names)
        self.defaults = {p.name: p.default for p in params if p.has_default}
        self.consts = [i for i, p in enumerate(params) if p.is_constexpr]
        self.runtime = [(i, not p.do_not_specialize, not p.do_not_specialize_on_alignment)
                        for i, p in enumerate(params) if not p.is_constexpr]
        # annotated runtime arguments have rules of their own: those kernels always take the JIT
        self.usable = not any(p.annotation and not p.is_constexpr for p in params)
        self.compiled = {}
        self._fast = {}  # argument names of a call site -> its generated key function

    def key(self, values, kwargs):
        options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in self.known))
        return (torch.cuda.current_device(), options, tuple(values[i] for i in self.consts),
                tuple(arg_key(values[i], False, spec, align) for i, spec, align in self.runtime))

    def key_and_values(self, kwargs):
        """(key, values in signature order): the same key as :meth:`key`, through a function generated for this
        call site's argument names and types (a generic loop over ~60 arguments cost ~40 us per launch)."""
        names = tuple(kwargs)
        fast = self._fast.get(names)
        if fast is None:
            fast = self._fast[names] = self._generate(kwargs)
        key, values = fast(kwargs)
        if key is None:  # an argument's type changed since the function was generated
            values = [kwargs[n] if n in kwargs else self.defaults[n] for n in self.names]
            key = self.key(values, kwargs)
        return key, values

    def _generate(self, kwargs):
        env = {"_dev": torch.cuda.current_device, "_int_type": _int_type}
        vals = []
        for i, n in enumerate(self.names):
            if n in kwargs:
                vals.append(f"kw[{n!r}]")
            else:
                env[f"d{i}"] = self.defaults[n]
                vals.append(f"d{i}")
        lines = [f"    v{i} = {v}" for i, v in enumerate(vals)]
        types, parts = [], []
        for i, spec, align in self.runtime:
            t = type(kwargs.get(self.names[i], self.defaults.get(self.names[i])))
            env[f"t{i}"] = t
            types.append(f"type(v{i}) is t{i}")
            if issubclass(t, bool):
                parts.append("'u1'")
            elif issubclass(t, int):
                kind = f"('i32' if {_I32[0]} <= v{i} <= {_I32[1]} else _int_type(v{i}))"  # inline: no call
                parts.append(f"({kind}, v{i} == 1, v{i} % 16 == 0)" if spec and align
                             else f"({kind}, v{i} == 1, False)" if spec else kind)
            elif issubclass(t, float):
                parts.append("'fp32'")
            elif issubclass(t, torch.Tensor):
                parts.append(f"(v{i}.dtype, v{i}.data_ptr() % 16 == 0)" if align else f"(v{i}.dtype, False)")
            elif t is type(None):
                parts.append("None")
            else:
                return lambda kw: (None, None)  # the generic key raises the clear error
        options = sorted(k for k in kwargs if k not in self.known)
        src = "\n".join([
            "def fast(kw):", *lines,
            f"    if not ({' and '.join(types) or 'True'}):", "        return None, None",
            f"    return (_dev(), ({''.join(f'({k!r}, kw[{k!r}]), ' for k in options)}), "
            f"({''.join(f'v{i}, ' for i in self.consts)}), ({''.join(p + ', ' for p in parts)})), "
            f"[{', '.join(f'v{i}' for i in range(len(vals)))}]",
        ])
        exec(compile(src, f"<launch key of {getattr(self.jit, '__name__', 'kernel')}>", "exec"), env)  # noqa: S102
        return env["fast"]

    def bind(self, grid, kwargs, tensors: dict[str, str]) -> Bound | None:
        """The compiled kernel these ``kwargs`` launch, as a :class:`Bound` that takes new tensors for the keyword
        arguments named in ``tensors`` (argument -> name in the caller's tensor table); None if not compiled yet."""
        key, values = self.key_and_values(kwargs)
        kernel = self.compiled.get(key)
        if kernel is None:
            return None
        position = {n: i for i, n in enumerate(self.names)}
        align = {i: a for i, _spec, a in self.runtime}
        values, slots = list(values), []
        for arg, name in tensors.items():
            i = position[arg]
            # the key holds each tensor's 16-byte alignment where Triton specialises on it: a call must match
            slots.append((i, name, values[i].data_ptr() % 16 == 0 if align.get(i) else None))
            values[i] = None  # no reference to this call's tensors
        return Bound(kernel[tuple(grid) + (1,) * (3 - len(grid))], values, tuple(slots))

    def __call__(self, grid, **kwargs):
        key, values = self.key_and_values(kwargs)
        kernel = self.compiled.get(key)
        if kernel is None:
            self.compiled[key] = launch_fitting(self.jit, grid, kwargs)
            return
        kernel[tuple(grid) + (1,) * (3 - len(grid))](*values)


class Bound:
    """One call site's compiled kernel with its argument values: a call fills in its tensors and launches."""

    __slots__ = ("runner", "values", "slots")

    def __init__(self, runner, values: list, slots: tuple):
        self.runner, self.values, self.slots = runner, values, slots

    def __call__(self, tensors: dict) -> bool:
        """Launches with ``tensors`` (by name); False, launching nothing, where an alignment differs from the
        key's (that launch then takes :func:`launch`)."""
        values = self.values.copy()
        for i, name, aligned in self.slots:
            t = tensors[name]
            if aligned is not None and (t.data_ptr() % 16 == 0) != aligned:
                return False
            values[i] = t
        self.runner(*values)
        return True


_launchers: dict = {}


def cached_launch_enabled() -> bool:
    return os.environ.get(ENV) != "0"


def bind(jit_fn, grid, kwargs: dict, tensors: dict[str, str]) -> Bound | None:
    """:meth:`CachedLauncher.bind` for a kernel :func:`launch` has launched on CUDA (None where it took the JIT)."""
    launcher = _launchers.get(jit_fn)
    if launcher is None or not launcher.usable or not cached_launch_enabled():
        return None
    return launcher.bind(grid, kwargs, tensors)


# kernel -> {(device, constexpr arguments, launch options): the pipeline stages its shared memory fits in}
_stages_that_fit: dict = {}


def _stages_key(jit_fn, kwargs: dict):
    consts = tuple((p.name, kwargs.get(p.name, p.default)) for p in jit_fn.params if p.is_constexpr)
    names = {p.name for p in jit_fn.params}
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in names))
    return torch.cuda.current_device(), consts, options


def launch_fitting(jit_fn, grid, kwargs: dict):
    """``jit_fn[grid](**kwargs)`` (returns the compiled kernel), with fewer pipeline stages where the kernel compiled
    with ``num_stages`` needs more shared memory than the device has.

    The launch settings are tuned on an H100 (227 KiB per program). A device with less shared memory, or a Triton
    that allocates more (3.8 and 3.9 gave each loop of the forward's per-class if/elif chain its own stage buffers:
    336 KiB at D = 64 with 4 stages, until ``Tiles.flat_dispatch``; bench/NOTES.md v21), would have Triton refuse
    the launch before it starts. It runs here with one stage less at a time, remembered per kernel and settings,
    and a warning names what changed.
    """
    # the key only for kernels that have had to drop stages: on the JIT path this runs at every launch
    asked = kwargs
    fits = _stages_that_fit.get(jit_fn)
    fit = fits.get(_stages_key(jit_fn, asked)) if fits else None
    if fit is not None:
        kwargs = {**kwargs, "num_stages": fit}
    first = None
    while True:
        try:
            compiled = jit_fn[grid](**kwargs)
        except OutOfResources as err:
            stages = kwargs.get("num_stages") or 3  # Triton's default
            if err.name != "shared memory" or stages <= 1:
                raise
            first = first or (err, stages)
            kwargs = {**kwargs, "num_stages": stages - 1}
            continue
        if first is not None:
            err, stages = first
            _stages_that_fit.setdefault(jit_fn, {})[_stages_key(jit_fn, asked)] = kwargs["num_stages"]
            warnings.warn(f"{getattr(jit_fn, '__name__', 'kernel')}: {err.required} B of shared memory at {stages} "
                          f"stages, {err.limit} B on this device; it runs with {kwargs['num_stages']} "
                          f"(triton {triton.__version__})", RuntimeWarning, stacklevel=3)
        return compiled


def launch(jit_fn, grid, **kwargs) -> None:
    """``jit_fn[grid](**kwargs)``, through :class:`CachedLauncher` on CUDA unless ``HF_ADASPLASH_CACHED_LAUNCH=0``;
    on CUDA with as many pipeline stages as fit (:func:`launch_fitting`)."""
    if not hasattr(jit_fn, "params") or not torch.cuda.is_available():
        jit_fn[grid](**kwargs)
        return
    if not cached_launch_enabled():
        launch_fitting(jit_fn, grid, kwargs)
        return
    launcher = _launchers.get(jit_fn)
    if launcher is None:
        launcher = _launchers[jit_fn] = CachedLauncher(jit_fn)
    if launcher.usable:
        launcher(grid, **kwargs)
    else:
        launch_fitting(jit_fn, grid, kwargs)
