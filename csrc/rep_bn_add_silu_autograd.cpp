// provg::rep_bn_add_silu_eager: the eager entry point of provg.ops.rep_bn_add_silu (ProVG Sec. 4.3) with
// its autograd node, argument packing and running-statistic update in C++, device-agnostic over the
// rep_bn_add_silu_{forward,backward} kernels (CPU or CUDA, as the inputs' device dispatches).
//
// The Python custom-op path (provg::rep_bn_add_silu with register_autograd, what torch.compile and
// torch.export trace) and a Python autograd.Function cost more per call than the kernels themselves on
// the small CFM maps (15², 30²); here one dispatcher call does what they do.
//
// Arguments follow torch.nn.functional.batch_norm, one entry per branch: a missing weight is 1, a
// missing bias 0; empty running-statistic lists mean untracked statistics (batch statistics always).
// In training with running statistics, running = (1 − m)·running + m·batch, with the unbiased batch
// variance, as torch.nn.BatchNorm2d updates them. The counters (the modules' num_batches_tracked, or
// none) are advanced by one.
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/full.h>
#include <ATen/ops/stack.h>

#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "eager_autograd.h"

namespace provg {
namespace {

using torch::autograd::variable_list;

at::MemoryFormat memory_layout(const at::Tensor& x) {
  // NCHW unless x is channels-last and not also plainly contiguous (as provg.ops._gate_api.memory_layout).
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast) ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous;
}

at::ScalarType accumulation_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Whether ``rows`` are contiguous CPU vectors of ``options``' dtype, all of one length.
bool plain_rows(at::TensorList rows, const at::TensorOptions& options) {
  const at::ScalarType dtype = options.dtype().toScalarType();
  const int64_t c = rows[0].numel();
  bool plain = options.device().is_cpu();
  for (const at::Tensor& r : rows)
    plain = plain && r.is_cpu() && r.scalar_type() == dtype && r.dim() == 1 && r.numel() == c && r.is_contiguous();
  return plain;
}

// The (K, C) stack of plain rows, copied in (at::stack and a cast cost a microsecond each, and on the 15² maps
// the host work around the kernels costs as much as they do).
at::Tensor copy_rows(at::TensorList rows, const at::TensorOptions& options) {
  at::Tensor out = at::empty({static_cast<int64_t>(rows.size()), rows[0].numel()}, options);
  const size_t bytes = static_cast<size_t>(rows[0].numel()) * out.element_size();
  char* to = static_cast<char*>(out.data_ptr());
  for (const at::Tensor& r : rows) {
    std::memcpy(to, r.const_data_ptr(), bytes);
    to += bytes;
  }
  return out;
}

// The (K, C) stacks in ``options``' dtype of two lists of K per-branch rows. Plain rows (the usual case on a CPU)
// are copied into two stacks; others (on a GPU, always) go into one (2K, C) at::stack whose halves are returned
// as views: one launch instead of two (on a CPU the two views cost more host time than a second small copy).
std::pair<at::Tensor, at::Tensor> pack_pair(at::TensorList first, at::TensorList second,
                                            const at::TensorOptions& options) {
  if (plain_rows(first, options) && plain_rows(second, options))
    return {copy_rows(first, options), copy_rows(second, options)};
  std::vector<at::Tensor> rows(first.begin(), first.end());
  rows.insert(rows.end(), second.begin(), second.end());
  const at::Tensor both = at::stack(rows).to(options.dtype().toScalarType());
  const int64_t k = static_cast<int64_t>(first.size());
  return {both.narrow(0, 0, k), both.narrow(0, k, k)};
}

// Advances each counter (a batch norm's num_batches_tracked) by one, as the module's training forward does: a
// direct write for the usual CPU int64 scalar (with its version bump), else one foreach add for the rest (one
// launch on a GPU instead of one per branch).
void advance(at::TensorList counters) {
  std::vector<at::Tensor> rest;
  for (const at::Tensor& counter : counters) {
    if (counter.is_cpu() && counter.scalar_type() == at::kLong && counter.numel() == 1 && !counter.is_inference()) {
      ++*counter.data_ptr<int64_t>();
      counter.unsafeGetTensorImpl()->bump_version();
    } else {
      rest.push_back(counter);
    }
  }
  if (!rest.empty()) {
    at::NoGradGuard no_grad;
    at::_foreach_add_(rest, 1);
  }
}

std::vector<at::Tensor> in_layout(at::TensorList inputs) {
  const at::MemoryFormat layout = memory_layout(inputs[0]);
  std::vector<at::Tensor> out;
  out.reserve(inputs.size());
  for (const at::Tensor& x : inputs) out.push_back(x.contiguous(layout));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_kernel(at::TensorList inputs, const at::Tensor& weight,
                                                              const at::Tensor& bias, const at::Tensor& mean,
                                                              const at::Tensor& var, bool use_batch, double eps) {
  static const Kernel<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double)>
      kernel("provg::rep_bn_add_silu_forward");
  return kernel(inputs, weight, bias, mean, var, use_batch, eps);
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> backward_kernel(
    const at::Tensor& grad, at::TensorList inputs, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, bool use_batch, double eps) {
  static const Kernel<std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor>(
      const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      bool, double)>
      kernel("provg::rep_bn_add_silu_backward");
  return kernel(grad, inputs, weight, bias, mean, var, use_batch, eps);
}

// y and the statistics used, with y's KernelBackward over the branches, weights and biases (every one a tensor:
// missing ones are filled in by the caller); the statistics are not differentiable.
variable_list forward_with_backward(at::TensorList inputs, at::TensorList weights, at::TensorList biases,
                                    const at::Tensor& mean, const at::Tensor& var, bool use_batch, double eps) {
  const at::TensorOptions options = inputs[0].options().dtype(accumulation_type(inputs[0]));
  const int64_t k = static_cast<int64_t>(inputs.size());
  const auto [weight, bias] = pack_pair(weights, biases, options);
  std::vector<at::Tensor> saved = in_layout(inputs);
  auto [y, used_mean, used_var] = forward_kernel(saved, weight, bias, mean, var, use_batch, eps);
  std::vector<at::Tensor> differentiable(inputs.begin(), inputs.end());
  std::vector<at::ScalarType> dtypes;  // the parameters' own, for their gradients
  for (const at::TensorList parameters : {weights, biases})
    for (const at::Tensor& p : parameters) {
      differentiable.push_back(p);
      dtypes.push_back(p.scalar_type());
    }
  saved.insert(saved.end(), {weight, bias, used_mean, used_var});
  attach_backward(y, "rep_bn_add_silu", differentiable, saved,
                  [k, use_batch, eps, dtypes](const at::Tensor& grad_y, const std::vector<at::Tensor>& s) {
                    const std::vector<at::Tensor> maps(s.begin(), s.begin() + k);
                    const at::Tensor grad = grad_y.contiguous(memory_layout(maps[0]));
                    auto [dinputs, dweight, dbias] =
                        backward_kernel(grad, maps, s[k], s[k + 1], s[k + 2], s[k + 3], use_batch, eps);
                    variable_list out(dinputs.begin(), dinputs.end());
                    for (const at::Tensor* d : {&dweight, &dbias}) {
                      const std::vector<at::Tensor> rows = d->unbind(0);
                      for (int64_t i = 0; i < k; ++i) {
                        const at::ScalarType dtype = dtypes[out.size() - k];  // after the K dinputs
                        out.push_back(rows[i].scalar_type() == dtype ? rows[i] : rows[i].to(dtype));
                      }
                    }
                    return out;
                  });
  return {y, used_mean, used_var};
}

template <typename T>
void update_running_cpu(at::TensorList running_means, at::TensorList running_vars, const at::Tensor& batch_mean,
                        const at::Tensor& batch_var, c10::ArrayRef<double> momenta, double correction) {
  const int64_t k = batch_mean.size(0), c = batch_mean.size(1);
  const T* mean = batch_mean.const_data_ptr<T>();
  const T* var = batch_var.const_data_ptr<T>();
  for (int64_t i = 0; i < k; ++i) {
    const T m = static_cast<T>(momenta[i]), keep = static_cast<T>(1.0 - momenta[i]);
    const T unbiased = static_cast<T>(correction);
    T* rm = running_means[i].data_ptr<T>();
    T* rv = running_vars[i].data_ptr<T>();
    for (int64_t j = 0; j < c; ++j) {
      rm[j] = keep * rm[j] + m * mean[i * c + j];
      rv[j] = keep * rv[j] + m * (var[i * c + j] * unbiased);
    }
  }
}

// running = (1 − m)·running + m·batch, with the unbiased batch variance (nn.BatchNorm2d's update).
void update_running(at::TensorList running_means, at::TensorList running_vars, const at::Tensor& batch_mean,
                    const at::Tensor& batch_var, c10::ArrayRef<double> momenta, int64_t count) {
  at::NoGradGuard no_grad;
  const double correction = static_cast<double>(count) / static_cast<double>(count - 1);
  bool plain = batch_mean.is_cpu();  // CPU, contiguous, the statistics' dtype: a loop instead of 4·K ops
  for (const at::TensorList stats : {running_means, running_vars})
    for (const at::Tensor& r : stats)
      plain = plain && r.is_cpu() && r.is_contiguous() && r.scalar_type() == batch_mean.scalar_type();
  if (plain) {
    AT_DISPATCH_FLOATING_TYPES(batch_mean.scalar_type(), "update_running", [&] {
      update_running_cpu<scalar_t>(running_means, running_vars, batch_mean, batch_var, momenta, correction);
    });
    return;
  }
  bool shared = true;  // the statistics' dtype and device, one momentum: three foreach ops
  for (const at::TensorList stats : {running_means, running_vars})
    for (const at::Tensor& r : stats)
      shared = shared && r.scalar_type() == batch_mean.scalar_type() && r.device() == batch_mean.device();
  for (const double m : momenta) shared = shared && m == momenta[0];
  if (shared) {  // on a GPU, three launches instead of 4·K + 1
    std::vector<at::Tensor> running(running_means.begin(), running_means.end());
    running.insert(running.end(), running_vars.begin(), running_vars.end());
    at::_foreach_mul_(running, 1.0 - momenta[0]);
    at::_foreach_add_(running_means, batch_mean.unbind(0), momenta[0]);
    at::_foreach_add_(running_vars, batch_var.unbind(0), momenta[0] * correction);
    return;
  }
  const at::Tensor unbiased = batch_var.mul(correction);
  for (int64_t i = 0; i < static_cast<int64_t>(momenta.size()); ++i) {
    running_means[i].mul_(1.0 - momenta[i]).add_(batch_mean[i].to(running_means[i].scalar_type()), momenta[i]);
    running_vars[i].mul_(1.0 - momenta[i]).add_(unbiased[i].to(running_vars[i].scalar_type()), momenta[i]);
  }
}

at::Tensor rep_bn_add_silu_eager(at::TensorList inputs, const c10::List<std::optional<at::Tensor>>& weights,
                                 const c10::List<std::optional<at::Tensor>>& biases, at::TensorList running_means,
                                 at::TensorList running_vars, at::TensorList counters, bool training,
                                 c10::ArrayRef<double> momenta, double eps) {
  const char* op = "rep_bn_add_silu";
  const int64_t k = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(k >= 1 && k <= 3, op, ": 1 to 3 branch inputs, got ", k);
  TORCH_CHECK(inputs[0].dim() == 4, op, ": inputs must be (B, C, H, W), got ", inputs[0].sizes());
  const bool tracked = !running_means.empty();
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == k && static_cast<int64_t>(biases.size()) == k &&
                  static_cast<int64_t>(momenta.size()) == k &&
                  (!tracked || (static_cast<int64_t>(running_means.size()) == k &&
                                static_cast<int64_t>(running_vars.size()) == k)),
              op, ": one weight, bias, momentum (and running mean and var) per branch; got ", k, " branches");
  const int64_t channels = inputs[0].size(1);
  const at::TensorOptions options = inputs[0].options().dtype(accumulation_type(inputs[0]));
  const bool use_batch = training || !tracked;
  at::Tensor mean, var;
  if (use_batch) {
    mean = var = at::empty({0}, options);
  } else {
    std::tie(mean, var) = pack_pair(running_means, running_vars, options);
  }
  std::vector<at::Tensor> weight_list, bias_list;
  for (int64_t i = 0; i < k; ++i) {
    const std::optional<at::Tensor> w = weights.get(i), b = biases.get(i);
    weight_list.push_back(w.has_value() && w->defined() ? *w : at::full({channels}, 1.0, options));
    bias_list.push_back(b.has_value() && b->defined() ? *b : at::full({channels}, 0.0, options));
  }
  variable_list out = forward_with_backward(inputs, weight_list, bias_list, mean, var, use_batch, eps);
  advance(counters);
  if (training && tracked) {
    update_running(running_means, running_vars, out[1], out[2], momenta, inputs[0].numel() / channels);
  }
  return out[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(provg, Autograd, m) { m.impl("rep_bn_add_silu_eager", &rep_bn_add_silu_eager); }

TORCH_LIBRARY_IMPL(provg, CompositeExplicitAutograd, m) {
  m.impl("rep_bn_add_silu_eager", &rep_bn_add_silu_eager);
}

}  // namespace provg
