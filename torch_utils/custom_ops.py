"""Just-in-time build of the C++/CUDA extensions behind `torch_utils.ops`.

`get_plugin()` compiles with `torch.utils.cpp_extension.load` (ninja) on first use,
into a build directory named after a hash of the sources' contents, and keeps the
loaded module for the rest of the process. `LazyPlugin` wraps it for the ops: it
decides between the CUDA path and the reference path, and warns once on failure.
"""

import glob
import hashlib
import os
import shutil
import warnings

import torch

#----------------------------------------------------------------------------

verbosity = 'none'  # 'none' = silent, 'brief' = one line per build, 'full' = compiler output.

_loaded = dict()    # (module_name, content hash) -> loaded module
_failed = dict()    # (module_name, content hash) -> RuntimeError of the failed build

#----------------------------------------------------------------------------

def _build_root() -> str:
    """Directory under which every extension gets its own hashed build folder."""
    root = os.environ.get('TORCH_EXTENSIONS_DIR')
    if root:
        return root
    import torch.utils.cpp_extension  # imported lazily: it logs about CUDA on import
    return torch.utils.cpp_extension._get_build_directory('overparam_stylegan_plugins', verbose=False)

def _content_hash(files) -> str:
    """MD5 over names and bytes of `files`, plus the torch/CUDA versions and the arch list."""
    md5 = hashlib.md5()
    for path in files:
        md5.update(os.path.basename(path).encode())
        with open(path, 'rb') as fh:
            md5.update(fh.read())
    md5.update(str(torch.__version__).encode())
    md5.update(str(torch.version.cuda).encode())
    md5.update(os.environ.get('TORCH_CUDA_ARCH_LIST', '').encode())
    return md5.hexdigest()

def _has_toolkit(root) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, 'include', 'cuda_runtime.h'))

def _fix_cuda_home() -> None:
    """Point torch at a CUDA toolkit with headers when its guess has none.

    torch derives CUDA_HOME from the `nvcc` on PATH, which is wrong when that nvcc
    is a wrapper script (e.g. /usr/local/bin/nvcc -> CUDA_HOME=/usr/local). An
    explicit $CUDA_HOME / $CUDA_PATH is always respected.
    """
    import torch.utils.cpp_extension as cpp
    if os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH') or _has_toolkit(cpp.CUDA_HOME):
        return
    candidates = ['/usr/local/cuda'] + sorted(glob.glob('/usr/local/cuda-*'), reverse=True)
    for root in candidates:
        if _has_toolkit(root) and os.path.isfile(os.path.join(root, 'bin', 'nvcc')):
            cpp.CUDA_HOME = root
            return

def _resolve(paths, source_dir):
    paths = list(paths or [])
    if source_dir is not None:
        paths = [os.path.join(source_dir, p) for p in paths]
    return [os.path.abspath(p) for p in paths]

#----------------------------------------------------------------------------

def get_plugin(module_name, sources, headers=None, source_dir=None, build_dir=None, **build_kwargs):
    """Build (or reuse) and import the extension `module_name`.

    Args:
        module_name:  Name of the Python module the extension defines (PYBIND11_MODULE).
        sources:      .cpp/.cu files, relative to `source_dir` when that is given.
        headers:      Extra files (.h) whose contents take part in the cache key.
        source_dir:   Folder the file names are relative to.
        build_dir:    Root of the build cache (default `$TORCH_EXTENSIONS_DIR` or
                      torch's extension directory); a subfolder per content hash.
        build_kwargs: Passed on to `torch.utils.cpp_extension.load`
                      (e.g. `extra_cuda_cflags`).

    Returns the imported module. Raises RuntimeError, with the compiler's message,
    when the build or the import fails; the failure is remembered in-process.
    """
    sources = _resolve(sources, source_dir)
    headers = _resolve(headers, source_dir)
    for path in sources + headers:
        if not os.path.isfile(path):
            raise RuntimeError(f'get_plugin({module_name!r}): missing source file {path}')
    digest = _content_hash(sources + headers)
    root = os.path.abspath(build_dir or _build_root())
    key = (module_name, digest, root)
    if key in _loaded:
        return _loaded[key]
    if key in _failed:
        raise _failed[key]

    # Copy the sources into a folder named after their hash, so that a changed
    # source gets a fresh folder and an unchanged one reuses the old objects.
    target = os.path.join(root, f'{module_name}-{digest}')
    os.makedirs(target, exist_ok=True)
    copied = []
    for path in sources + headers:
        dst = os.path.join(target, os.path.basename(path))
        if not os.path.isfile(dst):
            tmp = f'{dst}.tmp{os.getpid()}'
            shutil.copyfile(path, tmp)
            os.replace(tmp, dst)   # atomic against concurrent builders
        if path in sources:
            copied.append(dst)

    if verbosity in ('brief', 'full'):
        print(f'Setting up extension "{module_name}" in {target}... ', end='', flush=True)
    try:
        import torch.utils.cpp_extension
        _fix_cuda_home()
        module = torch.utils.cpp_extension.load(name=module_name, sources=copied, build_directory=target,
                                                verbose=(verbosity == 'full'), **build_kwargs)
    except Exception as exc:  # build errors come as RuntimeError/ImportError/OSError/CalledProcessError
        if verbosity in ('brief', 'full'):
            print('failed.')
        err = RuntimeError(f'Building extension "{module_name}" in {target} failed: '
                           f'{type(exc).__name__}: {exc}')
        err.__cause__ = exc
        _failed[key] = err
        raise err
    if verbosity in ('brief', 'full'):
        print('done.')
    _loaded[key] = module
    return module

#----------------------------------------------------------------------------

def _is_cuda_tensor(x) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == 'cuda'

class LazyPlugin:
    """One extension of `torch_utils/ops`, built the first time a CUDA tensor needs it.

    `use_cuda(x, impl)` answers whether an op should run its CUDA path:
    impl='ref' -> False; impl='cuda' -> True, or raise when `x` is not on a CUDA
    device or the build fails; impl=None -> True for a CUDA `x` whose plugin
    builds, else False (after a single warning with the reason if the build failed).
    """

    def __init__(self, module_name, sources, headers=(), **build_kwargs):
        self.module_name = module_name
        self.sources = list(sources)
        self.headers = list(headers)
        self.build_kwargs = build_kwargs
        self.source_dir = os.path.join(os.path.dirname(__file__), 'ops')
        self.reset()

    def reset(self):
        """Forget the loaded module, a remembered failure and the warning."""
        self.module = None
        self.error = None
        self.warned = False

    def load(self):
        """Build/import now; returns the module or raises RuntimeError."""
        if self.module is None:
            if self.error is not None:
                raise self.error
            try:
                self.module = get_plugin(self.module_name, self.sources, headers=self.headers,
                                         source_dir=self.source_dir, **self.build_kwargs)
            except RuntimeError as exc:
                self.error = exc
                raise
        return self.module

    def use_cuda(self, x: torch.Tensor, impl) -> bool:
        if impl not in (None, 'ref', 'cuda'):
            raise ValueError(f'impl must be None, "ref" or "cuda", got {impl!r}')
        if impl == 'ref':
            return False
        if impl is None and torch.compiler.is_compiling():
            # Under torch.compile the reference path is traced: Inductor fuses its elementwise work into kernels
            # of its own, while a plugin call (and its first-use self-check) would split the graph at every op.
            return False
        on_cuda = _is_cuda_tensor(x)
        if impl == 'cuda':
            if not on_cuda:
                raise ValueError(f'impl="cuda" needs a CUDA tensor, got device {getattr(x, "device", None)}')
            self.load()
            return True
        return on_cuda and self.try_load()

    def try_load(self) -> bool:
        """Build/import now; True on success, False (after a single warning with the reason) otherwise."""
        try:
            self.load()
        except RuntimeError as exc:
            if not self.warned:
                self.warned = True
                warnings.warn(f'{self.module_name}: CUDA extension unavailable, falling back to the '
                              f'reference implementation. Reason: {exc}', RuntimeWarning, stacklevel=4)
            return False
        return True

#----------------------------------------------------------------------------
