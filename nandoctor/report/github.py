def render(doc): raise NotImplementedError
