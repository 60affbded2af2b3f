// The Python module detox_kernels._C. Importing it runs the static op registrations of the
// other translation units; the module itself only describes the build.
#include <Python.h>

#ifndef DETOX_TORCH_VERSION
#define DETOX_TORCH_VERSION "unknown"
#endif
#ifndef DETOX_CUDA_ARCHS
#define DETOX_CUDA_ARCHS ""
#endif

static struct PyModuleDef detox_module = {PyModuleDef_HEAD_INIT, "_C",
                                          "detox_kernels compiled ops (registered under torch.ops.detox)",
                                          -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&detox_module);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "torch_version", DETOX_TORCH_VERSION);
#ifdef DETOX_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cuda_archs", DETOX_CUDA_ARCHS);
#ifdef _OPENMP
  PyModule_AddIntConstant(m, "with_openmp", 1);
#else
  PyModule_AddIntConstant(m, "with_openmp", 0);
#endif
  return m;
}
