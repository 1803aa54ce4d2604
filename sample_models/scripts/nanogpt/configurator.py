# Overrides the training script's globals from the command line, nanoGPT style. The script runs
# this file with exec(), so it sees and changes the script's module globals directly.
#   python train.py [override_file.py] [--key=value ...]
import sys
from ast import literal_eval

for _arg in sys.argv[1:]:
    if not _arg.startswith("--"):
        print(f"overriding config with {_arg}")
        exec(open(_arg).read())
        continue
    _key, _value = _arg[2:].split("=", 1)
    if _key not in globals():
        raise ValueError(f"unknown config key: {_key}")
    try:
        _parsed = literal_eval(_value)
    except (SyntaxError, ValueError):
        _parsed = _value
    if type(_parsed) is not type(globals()[_key]):
        raise TypeError(f"{_key} must be {type(globals()[_key]).__name__}, got {_value!r}")
    print(f"overriding: {_key} = {_parsed}")
    globals()[_key] = _parsed
