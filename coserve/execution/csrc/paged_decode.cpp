// Paged decode attention for CPU: one query token per sequence, K/V read in place from the pages.
//
// The portable backend gathers every sequence's K/V into a contiguous copy before calling SDPA,
// which moves each byte three times. Here each sequence streams its pages once for the scores and
// once for the values, and grouped query heads share those reads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

// exp for x <= 0: 2^k from the exponent bits, e^r (|r| <= ln2/2) from a degree-7 Taylor series.
// Relative error ~1e-7 (float rounding), and unlike std::exp the loop around it vectorises.
static inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float k = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += static_cast<int32_t>(k) << 23;
  std::memcpy(&p, &bits, sizeof bits);
  return p;
}

struct Layout {
  int64_t block_size, page_stride, token_stride, num_heads, num_kv_heads, head_dim;
};

// All heads of one sequence. A token's K (then V) row holds every KV head contiguously, so the
// pages are streamed in order, once for the scores and once for the weighted values.
template <typename scalar_t>
static void decode_sequence(const scalar_t* q, const scalar_t* k_base, const scalar_t* v_base,
                            const int64_t* table, int64_t context_len, int64_t window, const Layout& l,
                            float scale, scalar_t* out, std::vector<float>& scores,
                            std::vector<float>& acc, std::vector<float>& qf) {
  const int64_t first = window > 0 ? std::max<int64_t>(0, context_len - window) : 0;
  const int64_t n = context_len - first, group = l.num_heads / l.num_kv_heads, dim = l.head_dim;
  scores.resize(l.num_heads * n);
  acc.assign(l.num_heads * dim, 0.f);
  qf.resize(l.num_heads * dim);
  for (int64_t i = 0; i < l.num_heads * dim; ++i) qf[i] = static_cast<float>(q[i]) * scale;

  for (int64_t t0 = first - first % l.block_size; t0 < context_len; t0 += l.block_size) {
    const scalar_t* page = k_base + table[t0 / l.block_size] * l.page_stride;
    for (int64_t t = std::max(t0, first); t < std::min(t0 + l.block_size, context_len); ++t) {
      const scalar_t* row = page + (t - t0) * l.token_stride;
      for (int64_t h = 0; h < l.num_heads; ++h) {
        const scalar_t* k = row + (h / group) * dim;
        const float* qh = qf.data() + h * dim;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < dim; ++d) dot += qh[d] * static_cast<float>(k[d]);
        scores[h * n + (t - first)] = dot;
      }
    }
  }
  for (int64_t h = 0; h < l.num_heads; ++h) {
    float* s = scores.data() + h * n;
    float max_score = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) max_score = std::max(max_score, s[i]);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) {
      s[i] = exp_nonpositive(s[i] - max_score);
      total += s[i];
    }
    const float inv = 1.f / total;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) s[i] *= inv;
  }
  for (int64_t t0 = first - first % l.block_size; t0 < context_len; t0 += l.block_size) {
    const scalar_t* page = v_base + table[t0 / l.block_size] * l.page_stride;
    for (int64_t t = std::max(t0, first); t < std::min(t0 + l.block_size, context_len); ++t) {
      const scalar_t* row = page + (t - t0) * l.token_stride;
      for (int64_t h = 0; h < l.num_heads; ++h) {
        const scalar_t* v = row + (h / group) * dim;
        const float p = scores[h * n + (t - first)];
        float* a = acc.data() + h * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) a[d] += p * static_cast<float>(v[d]);
      }
    }
  }
  for (int64_t i = 0; i < l.num_heads * dim; ++i) out[i] = static_cast<scalar_t>(acc[i]);
}

// q, out: [B, Hq, D] contiguous. k_cache, v_cache: [num_blocks, block_size, Hkv, D] with a unit
// stride on D (views into the page pool). block_tables: [B, max_blocks] int64. context_lens: [B].
void paged_decode_attention(torch::Tensor out, torch::Tensor q, torch::Tensor k_cache,
                            torch::Tensor v_cache, torch::Tensor block_tables,
                            torch::Tensor context_lens, double scale, int64_t window) {
  TORCH_CHECK(q.is_contiguous() && out.is_contiguous(), "q and out must be contiguous");
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, "head_dim must have unit stride");
  TORCH_CHECK(k_cache.strides() == v_cache.strides(), "k and v caches must share a layout");
  TORCH_CHECK(block_tables.scalar_type() == torch::kLong && context_lens.scalar_type() == torch::kLong);
  TORCH_CHECK(k_cache.stride(2) == q.size(2), "a token's KV heads must be contiguous");
  const int64_t batch = q.size(0);
  const Layout layout{k_cache.size(1), k_cache.stride(0), k_cache.stride(1), q.size(1), k_cache.size(2),
                      q.size(2)};
  auto tables = block_tables.contiguous();
  auto lens = context_lens.contiguous();
  const int64_t max_blocks = tables.size(1);
  const int64_t* table_ptr = tables.data_ptr<int64_t>();
  const int64_t* len_ptr = lens.data_ptr<int64_t>();
  const int64_t seq_stride = layout.num_heads * layout.head_dim;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    const scalar_t* q_ptr = q.data_ptr<scalar_t>();
    const scalar_t* k_ptr = k_cache.data_ptr<scalar_t>();
    const scalar_t* v_ptr = v_cache.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores, acc, qf;
      for (int64_t b = begin; b < end; ++b) {
        decode_sequence<scalar_t>(q_ptr + b * seq_stride, k_ptr, v_ptr, table_ptr + b * max_blocks,
                                  len_ptr[b], window, layout, static_cast<float>(scale),
                                  out_ptr + b * seq_stride, scores, acc, qf);
      }
    });
  });
}
