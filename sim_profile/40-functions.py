# Functions for `function_execute` (the reference's names and results): a sleep, and a
# FIFO buffer whose pop fails when it is empty (a failed call with a traceback).
import time as ttime  # noqa: F401  (the reference's profile has it: uploaded scripts call ttime.sleep)
from time import sleep as _sleep  # `time` is function_sleep's parameter
from typing import Any

_fifo_buffer: list[Any] = []


def function_sleep(time: float) -> dict[str, Any]:
    """Sleep for a given number of seconds."""
    print(f"function_sleep: waiting for {time} s")
    _sleep(time)
    print("function_sleep: done")
    return {"success": True, "time": time}


def push_buffer_element(element: Any) -> None:
    """Push an element to a FIFO buffer."""
    print(f"push_buffer_element: {element!r}")
    _fifo_buffer.append(element)


def pop_buffer_element() -> Any:
    """Pop an element from the FIFO buffer; raises IndexError when the buffer is empty."""
    print("pop_buffer_element")
    return _fifo_buffer.pop(0)


def clear_buffer() -> None:
    """Empty the FIFO buffer."""
    print("clear_buffer")
    _fifo_buffer.clear()
