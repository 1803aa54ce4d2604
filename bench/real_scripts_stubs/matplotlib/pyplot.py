"""Every pyplot call does nothing and returns None."""


def __getattr__(name):
    return lambda *args, **kwargs: None
