// The experiment query language of `lesion ls --where ... --order-by ...` and the Python client,
// compiled to an SQL WHERE / ORDER BY over the experiment store's schema with every value bound.
//
// Filter grammar (keywords case-insensitive; NOT binds tighter than AND, AND tighter than OR):
//   expr       := and_expr { OR and_expr }
//   and_expr   := unary { AND unary }
//   unary      := NOT unary | '(' expr ')' | comparison
//   comparison := field op value          op := = | != | < | <= | > | >=
//   value      := number (-1, 2.5, 1e-3) | "double-quoted string" (\" and \\ escape)
// Fields:
//   id, user, name, model                    strings, every op (lexicographic)
//   parent                                   the id of a sweep variant's parent experiment; ""
//                                            for top-level experiments (parent = "" selects them)
//   status                                   = / != one of queued running done failed cancelled
//                                            interrupted
//   created, started, finished               a time: "2026-12-02T10:00:00Z" (RFC 3339, offset
//                                            allowed), "2026-12-02" (UTC midnight) or unix seconds
//   tag                                      = / != "x": has (has not) the tag
//   metric.NAME.FIELD                        FIELD: baseline | value | delta | delta_pct; a number.
//                                            True if the experiment has metric NAME and its FIELD
//                                            compares true. NAME is everything between "metric."
//                                            and the last '.', so it may contain '.' and ':'
//                                            (metric.top1:blocks.0.resid_post.value); it may also
//                                            be quoted: metric."top1:blocks.0.resid_post".value.
//   intervention.KIND.FIELD                  KIND: head_ablation | weight_edit | norm_channel_reset |
//                                            attention_bias | activation_edit; FIELD a field of
//                                            that message in experiment.proto (layer, heads, mode,
//                                            module, row, col, op, value, norm, channels, site, ...).
//                                            True if some intervention of that kind has FIELD op
//                                            value; for repeated fields (heads, channels, positions,
//                                            dims, key) if some element does. Enums compare by name
//                                            ("ZERO"); unset fields compare as their default.
// Examples:
//   model = "gpt2" AND metric.perplexity.delta_pct > 1
//   (tag = "sinks" OR tag = "super-weights") AND NOT status = "failed"
//   intervention.head_ablation.layer = 5 AND intervention.head_ablation.heads = 3
//   intervention.weight_edit.module = "mlp.down" AND created >= "2026-12-01T00:00:00Z"
//
// Order grammar: key { ',' key }, key := field [asc | desc], field one of id user name model
// status created started finished or metric.NAME.FIELD (experiments without the metric last).
// Empty: newest first. Ties are always broken by id, so pages are stable.
//
// Limits: a filter or order of at most 16384 bytes, NOT and '(' nested at most 32 deep, at most 256
// comparisons in a filter and 256 keys in an order; times within the years 1 to 9999.
//
// Errors: InvalidArgument naming the problem and its 1-based column ("unknown field 'modle' at
// column 1", "unbalanced parentheses: '(' at column 3 is never closed", "NOT and parentheses nested
// more than 32 deep at column 65", ...); they quote at most 80 characters of the input.
// Thread-safety: free functions, no state.
#ifndef LESION_STORAGE_QUERY_H_
#define LESION_STORAGE_QUERY_H_

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion::storage {

// A value bound to one '?' of the SQL text.
using SqlValue = std::variant<int64_t, double, std::string>;

// SQL fragments over the table `experiments` aliased `e` (and `metrics`, `experiment_tags`).
struct CompiledQuery {
  std::string where_sql = "1";         // a boolean expression
  std::vector<SqlValue> where_params;  // in the order of its '?'
  std::string order_sql;               // the text after ORDER BY
  std::vector<SqlValue> order_params;
};

// Compiles a filter (may be empty: every experiment) and an order (may be empty).
absl::StatusOr<CompiledQuery> CompileQuery(absl::string_view where, absl::string_view order_by);

}  // namespace lesion::storage

#endif  // LESION_STORAGE_QUERY_H_
