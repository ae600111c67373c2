"""The interfaces of traind: the HTTP control plane (``api.web``) and the ``traind``
command line (``api.cli``). Never imports torch, nor anything of ``trainer`` but
``trainer.records`` (ARCHITECTURE.md section 3)."""
