// Extension entry point. The ops bind through the PyTorch dispatcher (TORCH_LIBRARY), so
// cvops/extension.py loads this library with torch.ops.load_library; the only op defined
// here reports how the library was built.
#include <string>

#include <torch/library.h>

#ifndef CVOPS_TORCH_VERSION
#define CVOPS_TORCH_VERSION "unknown"
#endif

namespace {

std::string build_info() {
  std::string info = "{\"torch_version\": \"" CVOPS_TORCH_VERSION "\", \"with_cuda\": ";
#ifdef CVOPS_WITH_CUDA
  info += "true";
#else
  info += "false";
#endif
  return info + "}";
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cvops, m) { m.def("_build_info() -> str", &build_info); }
