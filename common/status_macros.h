// Status propagation macros for functions that return absl::Status or absl::StatusOr<T>.
//
//   RETURN_IF_ERROR(WriteHeader(file));
//   ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Create(dir));
//
// Header-only; thread-compatible (no state).
#ifndef LESION_COMMON_STATUS_MACROS_H_
#define LESION_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LESION_STATUS_CONCAT_INNER_(a, b) a##b
#define LESION_STATUS_CONCAT_(a, b) LESION_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK. Each use names its own
// variable, so that uses nested in a lambda inside `expr` shadow nothing.
#define RETURN_IF_ERROR(expr) LESION_RETURN_IF_ERROR_IMPL_(LESION_STATUS_CONCAT_(lesion_status_, __COUNTER__), expr)

#define LESION_RETURN_IF_ERROR_IMPL_(status, expr) \
  do {                                             \
    const ::absl::Status status = (expr);          \
    if (!status.ok()) return status;               \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, otherwise moves the value
// into `lhs`, which may be a declaration.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  LESION_ASSIGN_OR_RETURN_IMPL_(LESION_STATUS_CONCAT_(lesion_statusor_, __COUNTER__), lhs, rexpr)

#define LESION_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // LESION_COMMON_STATUS_MACROS_H_
