/* The offsets oxeye_unwind::python reads, as the compiler lays them out: built by tests/python.rs
 * against each installed CPython's headers and compared with python::LAYOUTS. */
#define Py_BUILD_CORE 1
#include <stddef.h>
#include <stdio.h>
#include "Python.h"
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#else
#include "frameobject.h"
#endif
#define P(name, expr) printf("%s=%zu\n", name, (size_t)(expr))
int main(void) {
  printf("version=%d.%d\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
  P("runtime.interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#if PY_VERSION_HEX >= 0x030B0000
  P("interp.threads_head", offsetof(PyInterpreterState, threads.head));
#else
  P("interp.threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
  P("interp.next", offsetof(PyInterpreterState, next));
  P("tstate.next", offsetof(PyThreadState, next));
#if PY_VERSION_HEX >= 0x030B0000
  P("tstate.native_thread_id", offsetof(PyThreadState, native_thread_id));
#else
  P("tstate.thread_id", offsetof(PyThreadState, thread_id));
#endif
#if PY_VERSION_HEX >= 0x030D0000
  P("tstate.current_frame", offsetof(PyThreadState, current_frame));
  P("frame.code", offsetof(_PyInterpreterFrame, f_executable));
  P("frame.previous", offsetof(_PyInterpreterFrame, previous));
  P("frame.instr", offsetof(_PyInterpreterFrame, instr_ptr));
  P("frame.owner", offsetof(_PyInterpreterFrame, owner));
#elif PY_VERSION_HEX >= 0x030B0000
  P("tstate.cframe", offsetof(PyThreadState, cframe));
  P("cframe.current_frame", offsetof(_PyCFrame, current_frame));
  P("frame.code", offsetof(_PyInterpreterFrame, f_code));
  P("frame.previous", offsetof(_PyInterpreterFrame, previous));
  P("frame.instr", offsetof(_PyInterpreterFrame, prev_instr));
#if PY_VERSION_HEX >= 0x030C0000
  P("frame.owner", offsetof(_PyInterpreterFrame, owner));
#else
  P("frame.is_entry", offsetof(_PyInterpreterFrame, is_entry));
#endif
#else
  P("tstate.frame", offsetof(PyThreadState, frame));
  P("frame.code", offsetof(PyFrameObject, f_code));
  P("frame.previous", offsetof(PyFrameObject, f_back));
  P("frame.lasti", offsetof(PyFrameObject, f_lasti));
#endif
  P("code.filename", offsetof(PyCodeObject, co_filename));
  P("code.name", offsetof(PyCodeObject, co_name));
#if PY_VERSION_HEX >= 0x030B0000
  P("code.qualname", offsetof(PyCodeObject, co_qualname));
  P("code.adaptive", offsetof(PyCodeObject, co_code_adaptive));
#else
  P("code.code", offsetof(PyCodeObject, co_code));
#endif
  P("code.firstlineno", offsetof(PyCodeObject, co_firstlineno));
  P("code.linetable", offsetof(PyCodeObject, co_linetable));
  P("unicode.ascii_data", sizeof(PyASCIIObject));
  P("unicode.compact_data", sizeof(PyCompactUnicodeObject));
  P("unicode.state", offsetof(PyASCIIObject, state));
  P("unicode.length", offsetof(PyASCIIObject, length));
  P("bytes.size", offsetof(PyVarObject, ob_size));
  P("bytes.data", offsetof(PyBytesObject, ob_sval));
  P("object.type", offsetof(PyObject, ob_type));
  return 0;
}
