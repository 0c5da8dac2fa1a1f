"""Safe (meta-)reinforcement learning built on :mod:`difftrust`.

Arrows run one way: ``meta_cpo -> cpo -> rollout -> {envs, policy}``; everything
here may use :mod:`difftrust` and :mod:`rl.runtime`.
"""
