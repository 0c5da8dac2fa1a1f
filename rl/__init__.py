"""Safe (meta-)reinforcement learning built on :mod:`difftrust`.

Arrows run one way: ``meta_cpo -> cpo -> rollout -> {envs, policy}``; everything
here may use :mod:`difftrust` and :mod:`rl.runtime`.
"""


def __getattr__(name: str) -> str:
    # rl.__version__ is the installed distribution's (one version: difftrust.__version__); read
    # lazily so that importing rl stays light (gymnasium imports it to register the ids).
    if name == "__version__":
        from importlib.metadata import version

        return version("difftrust")
    raise AttributeError(f"module 'rl' has no attribute {name!r}")
