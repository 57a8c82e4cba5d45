// LeanFusedAdam's step (maml_ext/train/optim.py) in one call from Python: torch's own fused Adam
// kernel (at::_fused_adam_, the kernel torch.optim.Adam(fused=True) runs) on tensor lists held
// here since the optimizer gathered them. From Python the same step costs two dispatches with
// four to five tensor lists each (~15 µs on the paper's sinusoid MLP); here the lists are not
// converted again and the calls dispatch from C++ (benchmarks/RESULTS.md, issue 14.2, the
// literal path). Same kernel, same arguments: the same bits as the Python step.
#include <ATen/ops/_fused_adam.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <utility>
#include <vector>

#include "mlp/adam_lists.h"

namespace maml_ext {
namespace {

class FusedAdamLists {
 public:
  FusedAdamLists(std::vector<at::Tensor> params, std::vector<at::Tensor> exp_avgs,
                 std::vector<at::Tensor> exp_avg_sqs, std::vector<at::Tensor> steps,
                 at::Tensor step_counts)
      : params_(std::move(params)),
        exp_avgs_(std::move(exp_avgs)),
        exp_avg_sqs_(std::move(exp_avg_sqs)),
        steps_(std::move(steps)),
        step_counts_(std::move(step_counts)) {
    const size_t n = params_.size();
    TORCH_CHECK(exp_avgs_.size() == n && exp_avg_sqs_.size() == n && steps_.size() == n,
                "FusedAdamLists: expected one exp_avg, exp_avg_sq and step per parameter");
    grads_.reserve(n);
    plain_counts_ = step_counts_.is_cpu() && step_counts_.scalar_type() == at::kFloat &&
                    step_counts_.is_contiguous() && !step_counts_.requires_grad();
  }

  // Adam's step from the parameters' .grad; false (nothing done) when one is missing.
  bool step(double lr, double beta1, double beta2, double weight_decay, double eps, bool maximize) {
    grads_.clear();
    for (const at::Tensor& p : params_) {
      const at::Tensor& g = p.grad();
      if (!g.defined()) return false;
      grads_.push_back(g);
    }
    const c10::NoGradGuard no_grad;
    // The per-parameter step counts are views of step_counts: one add increments them all
    // (on the CPU without a dispatch: the same float sums, the version bumped as add_ does).
    if (plain_counts_) {
      float* counts = step_counts_.mutable_data_ptr<float>();
      for (int64_t i = 0; i < step_counts_.numel(); ++i) counts[i] += 1.0f;
      step_counts_.unsafeGetTensorImpl()->bump_version();
    } else {
      step_counts_.add_(1);
    }
    at::_fused_adam_(params_, grads_, exp_avgs_, exp_avg_sqs_, {}, steps_, lr, beta1, beta2,
                     weight_decay, eps, /*amsgrad=*/false, maximize);
    grads_.clear();  // .grad is the user's: hold no reference past the step
    return true;
  }

 private:
  std::vector<at::Tensor> params_, exp_avgs_, exp_avg_sqs_, steps_, grads_;
  at::Tensor step_counts_;
  bool plain_counts_;
};

}  // namespace

void bind_adam_lists(pybind11::module& m) {
  pybind11::class_<FusedAdamLists>(m, "FusedAdamLists")
      .def(pybind11::init<std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>(),
           pybind11::arg("params"), pybind11::arg("exp_avgs"), pybind11::arg("exp_avg_sqs"),
           pybind11::arg("steps"), pybind11::arg("step_counts"))
      .def("step", &FusedAdamLists::step, pybind11::arg("lr"), pybind11::arg("beta1"),
           pybind11::arg("beta2"), pybind11::arg("weight_decay"), pybind11::arg("eps"),
           pybind11::arg("maximize"),
           "torch's fused Adam step from the parameters' .grad; False (nothing done) if one is None.");
}

}  // namespace maml_ext
