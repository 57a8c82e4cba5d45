#include "mlp/mlp_layout.h"

#include <c10/util/Exception.h>

namespace maml_ext::mlp {

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::Relu;
  if (name == "tanh") return Activation::Tanh;
  // The ops check their arguments first (checks::check_hvp / check_maml): a user never gets here.
  TORCH_INTERNAL_ASSERT(false, "parse_activation: unchecked activation '", name, "'");
}

Loss parse_loss(const std::string& name) {
  if (name == "mse") return Loss::Mse;
  if (name == "cross_entropy") return Loss::CrossEntropy;
  if (name == "gaussian_nll") return Loss::GaussianNll;
  TORCH_INTERNAL_ASSERT(false, "parse_loss: unchecked loss '", name, "'");
}

Layout make_layout(const std::vector<int64_t>& widths, Activation act, Loss loss) {
  Layout L;
  L.act = act;
  L.loss = loss;
  L.layers = static_cast<int>(widths.size()) - 1;
  L.dim = widths;
  L.w_off.assign(L.layers + 1, 0);
  L.b_off.assign(L.layers + 1, 0);
  int64_t off = 0;
  for (int l = 1; l <= L.layers; ++l) {
    L.w_off[l] = off;
    off += widths[l] * widths[l - 1];
    L.b_off[l] = off;
    off += widths[l];
  }
  if (loss == Loss::GaussianNll) {
    L.log_std_off = off;
    off += widths[L.layers];
  }
  L.numel = off;
  return L;
}

}  // namespace maml_ext::mlp
