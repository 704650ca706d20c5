#include "storage/query.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/error_text.h"
#include "common/status_macros.h"
#include "proto/lesion/v1/experiment.pb.h"

namespace lesion::storage {
namespace {

// Limits of what a query may hold: the parser recurses on NOT and '(', and SQLite has limits of its
// own. Its parser stack holds 100 entries (YYSTACKDEPTH of the system's 3.40): each level of NOT
// or '(' takes one of them as compiled below (deepest operand first, NOT as "IS NOT 1"), an
// operand before a deeper one at most 2 more (possible at most log2(kMaxTerms) times on one path),
// the comparison at the bottom about 20. Its expressions are at most 1000 deep; a chain of N
// comparisons is N deep there.
constexpr size_t kMaxQueryBytes = 16384;
constexpr int kMaxNesting = 32;  // NOT and '(' around one comparison
constexpr int kMaxTerms = 256;   // comparisons in a filter, keys in an order
// Times as unix seconds: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, the RFC 3339 range (and
// well inside int64 microseconds).
constexpr double kMinUnixSeconds = -62135596800.0;
constexpr double kMaxUnixSeconds = 253402300799.0;

enum class TokenKind { kEnd, kLParen, kRParen, kComma, kOp, kString, kNumber, kWord };

struct Token {
  TokenKind kind = TokenKind::kEnd;
  int column = 0;                     // 1-based
  std::string text;                   // the source text (for kWord / kOp), the unescaped value (kString)
  std::vector<std::string> segments;  // kWord: '.'-separated parts, quoted parts unquoted
  std::vector<bool> quoted;           // kWord: which segments were quoted
  double number = 0;                  // kNumber
};

std::string Describe(const Token& t) {
  switch (t.kind) {
    case TokenKind::kEnd:
      return "the end of the query";
    case TokenKind::kString:
      return QuoteForError(t.text);
    default:
      return absl::StrCat("'", ClipForError(t.text), "'");
  }
}

// "WHAT at column N[; HINT]".
absl::Status Bad(int column, absl::string_view what, absl::string_view hint = "") {
  return absl::InvalidArgumentError(absl::StrCat(what, " at column ", column, hint.empty() ? "" : "; ", hint));
}

bool IsSegmentChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':'; }

// Reads a double-quoted string starting at text[*pos] == '"'; leaves *pos after the closing quote.
absl::StatusOr<std::string> LexString(absl::string_view text, size_t* pos) {
  const int column = static_cast<int>(*pos) + 1;
  std::string out;
  for (size_t i = *pos + 1; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size() && (text[i + 1] == '"' || text[i + 1] == '\\')) {
      out.push_back(text[++i]);
    } else if (text[i] == '"') {
      *pos = i + 1;
      return out;
    } else {
      out.push_back(text[i]);
    }
  }
  return Bad(column, "unterminated string starting");
}

absl::StatusOr<std::vector<Token>> Lex(absl::string_view text) {
  std::vector<Token> tokens;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    Token t;
    t.column = static_cast<int>(i) + 1;
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (c == '(' || c == ')' || c == ',') {
      t.kind = c == '(' ? TokenKind::kLParen : c == ')' ? TokenKind::kRParen : TokenKind::kComma;
      t.text = std::string(1, c);
      ++i;
    } else if (c == '=' || c == '!' || c == '<' || c == '>') {
      size_t j = i + 1;
      while (j < text.size() && (text[j] == '=' || text[j] == '!' || text[j] == '<' || text[j] == '>')) ++j;
      t.kind = TokenKind::kOp;
      t.text = std::string(text.substr(i, j - i));
      if (t.text != "=" && t.text != "!=" && t.text != "<" && t.text != "<=" && t.text != ">" && t.text != ">=") {
        const char* hint = t.text == "==" ? " (use =)" : t.text == "<>" ? " (use !=)" : "";
        return Bad(t.column, absl::StrCat("unknown operator '", ClipForError(t.text), "'", hint),
                   "operators are = != < <= > >=");
      }
      i = j;
    } else if (c == '"') {
      t.kind = TokenKind::kString;
      ASSIGN_OR_RETURN(t.text, LexString(text, &i));
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+' || c == '.') {
      size_t j = i + 1;
      while (j < text.size() && (std::isalnum(static_cast<unsigned char>(text[j])) || text[j] == '.' ||
                                 ((text[j] == '-' || text[j] == '+') && (text[j - 1] == 'e' || text[j - 1] == 'E')))) {
        ++j;
      }
      t.kind = TokenKind::kNumber;
      t.text = std::string(text.substr(i, j - i));
      if (!absl::SimpleAtod(t.text, &t.number)) {
        return Bad(t.column, absl::StrCat("bad number '", ClipForError(t.text), "'"));
      }
      if (!std::isfinite(t.number)) {
        return Bad(t.column, absl::StrCat("number '", ClipForError(t.text), "' out of range"));
      }
      i = j;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      // A word: segments joined by '.', each bare ([A-Za-z0-9_:]+) or a quoted string.
      t.kind = TokenKind::kWord;
      size_t j = i;
      while (true) {
        if (j < text.size() && text[j] == '"') {
          ASSIGN_OR_RETURN(std::string segment, LexString(text, &j));
          t.segments.push_back(std::move(segment));
          t.quoted.push_back(true);
        } else {
          const size_t start = j;
          while (j < text.size() && IsSegmentChar(text[j])) ++j;
          if (j == start) {
            return Bad(static_cast<int>(j) + 1,
                       absl::StrCat("empty component in field name '", ClipForError(text.substr(i, j - i)), "'"));
          }
          t.segments.emplace_back(text.substr(start, j - start));
          t.quoted.push_back(false);
        }
        if (j < text.size() && text[j] == '.') {
          ++j;
          continue;
        }
        break;
      }
      t.text = std::string(text.substr(i, j - i));
      i = j;
    } else {
      return Bad(t.column, absl::StrCat("unexpected character '", std::string(1, c), "'"));
    }
    tokens.push_back(std::move(t));
  }
  Token end;
  end.column = static_cast<int>(text.size()) + 1;
  tokens.push_back(end);
  return tokens;
}

bool IsKeyword(const Token& t, absl::string_view keyword) {
  return t.kind == TokenKind::kWord && t.segments.size() == 1 && !t.quoted[0] &&
         absl::EqualsIgnoreCase(t.segments[0], keyword);
}

constexpr absl::string_view kStatuses[] = {"queued", "running", "done", "failed", "cancelled", "interrupted"};
constexpr absl::string_view kFieldList =
    "id, user, name, model, status, parent, created, started, finished, tag, metric.NAME.FIELD, "
    "intervention.KIND.FIELD";

// Record fields that map to one column of `experiments`.
std::optional<std::string> RecordColumn(absl::string_view field) {
  if (field == "id" || field == "user" || field == "name" || field == "model" || field == "status") {
    return absl::StrCat("e.", field);
  }
  if (field == "created" || field == "started" || field == "finished") {
    return absl::StrCat("e.", field, "_us");
  }
  if (field == "parent") return std::string("COALESCE(e.parent_id, '')");  // "" for top-level experiments
  return std::nullopt;
}

bool IsTimeField(absl::string_view field) { return field == "created" || field == "started" || field == "finished"; }

absl::Status TimeOutOfRange(const Token& value, absl::string_view field) {
  return Bad(value.column, absl::StrCat("time ", Describe(value), " out of range for field '", field, "'"),
             absl::StrCat("times are from 0001-01-01 to 9999-12-31 (unix seconds ",
                          static_cast<int64_t>(kMinUnixSeconds), " to ", static_cast<int64_t>(kMaxUnixSeconds), ")"));
}

absl::StatusOr<int64_t> ParseTimeValue(const Token& value, absl::string_view field) {
  if (value.kind == TokenKind::kNumber) {
    // Checked before the conversion: a double beyond int64 makes llround undefined.
    if (!(value.number >= kMinUnixSeconds && value.number <= kMaxUnixSeconds)) {
      return TimeOutOfRange(value, field);
    }
    return static_cast<int64_t>(std::llround(value.number * 1e6));
  }
  if (value.kind == TokenKind::kString) {
    absl::Time t;
    std::string err;
    if (absl::ParseTime(absl::RFC3339_full, value.text, &t, &err) ||
        absl::ParseTime("%Y-%m-%d", value.text, absl::UTCTimeZone(), &t, &err)) {
      if (t < absl::FromUnixSeconds(static_cast<int64_t>(kMinUnixSeconds)) ||
          t >= absl::FromUnixSeconds(static_cast<int64_t>(kMaxUnixSeconds) + 1)) {
        return TimeOutOfRange(value, field);
      }
      return absl::ToUnixMicros(t);
    }
    return Bad(value.column, absl::StrCat("bad time ", Describe(value), " for field '", field, "'"),
               "use \"2026-12-02T10:00:00Z\", \"2026-12-02\" or unix seconds");
  }
  return Bad(value.column, absl::StrCat("expected a time for field '", field, "', found ", Describe(value)));
}

// A compiled part of a filter: SQL, the values of its '?' in order, and the levels of NOT and '('
// in it (of the deepest path).
struct Expr {
  std::string sql;
  std::vector<SqlValue> params;
  int depth = 0;
};

// Parses and emits SQL as it goes.
class Compiler {
 public:
  explicit Compiler(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  absl::StatusOr<std::string> Filter(std::vector<SqlValue>* params) {
    if (Peek().kind == TokenKind::kEnd) return std::string("1");
    std::vector<SqlValue> scratch;
    params_ = &scratch;
    ASSIGN_OR_RETURN(Expr expr, Or());
    if (Peek().kind == TokenKind::kRParen) {
      return Bad(Peek().column, "unbalanced parentheses: unexpected ')'");
    }
    if (Peek().kind != TokenKind::kEnd) {
      return Bad(Peek().column, absl::StrCat("expected AND, OR or the end, found ", Describe(Peek())));
    }
    *params = std::move(expr.params);
    return std::move(expr.sql);
  }

  absl::StatusOr<std::string> Order(std::vector<SqlValue>* params) {
    params_ = params;
    std::vector<std::string> keys;
    if (Peek().kind == TokenKind::kEnd) return std::string("e.created_us DESC, e.id ASC");
    while (true) {
      const Token& field = Next();
      if (static_cast<int>(keys.size()) == kMaxTerms) {
        return Bad(field.column, absl::StrCat("more than ", kMaxTerms, " keys"),
                   absl::StrCat("an order has at most ", kMaxTerms, " keys"));
      }
      if (field.kind != TokenKind::kWord) {
        return Bad(field.column, absl::StrCat("expected a field to order by, found ", Describe(field)));
      }
      std::string expr;
      if (std::optional<std::string> column = RecordColumn(field.segments[0]);
          column.has_value() && field.segments.size() == 1) {
        expr = *column;
      } else if (field.segments[0] == "metric") {
        ASSIGN_OR_RETURN(auto metric, MetricField(field));
        params_->push_back(metric.first);
        expr = absl::StrCat("(SELECT m.", metric.second,
                            " FROM metrics AS m WHERE m.experiment_id = e.id AND m.name = ?)");
      } else {
        return Bad(field.column, absl::StrCat("cannot order by '", ClipForError(field.text), "'"),
                   "order by id, user, name, model, status, created, started, finished or "
                   "metric.NAME.FIELD");
      }
      std::string direction = "ASC";
      if (IsKeyword(Peek(), "asc") || IsKeyword(Peek(), "desc")) {
        direction = absl::AsciiStrToUpper(Next().segments[0]);
      }
      keys.push_back(absl::StrCat(expr, " ", direction, " NULLS LAST"));
      if (Peek().kind == TokenKind::kComma) {
        Next();
        continue;
      }
      if (Peek().kind != TokenKind::kEnd) {
        return Bad(Peek().column, absl::StrCat("expected asc, desc, ',' or the end, found ", Describe(Peek())));
      }
      break;
    }
    keys.push_back("e.id ASC");
    return absl::StrJoin(keys, ", ");
  }

 private:
  const Token& Peek() const { return tokens_[pos_]; }
  const Token& Next() {
    const Token& t = tokens_[pos_];
    if (t.kind != TokenKind::kEnd) ++pos_;
    return t;
  }

  // "a OP b OP ...", the deepest operand first: SQLite parses it with nothing of this chain on its
  // parser stack (AND and OR are commutative in SQL's three-valued logic, and nothing here has
  // side effects).
  static Expr Chain(std::vector<Expr> operands, absl::string_view op) {
    if (operands.size() == 1) return std::move(operands[0]);
    size_t deepest = 0;
    for (size_t i = 1; i < operands.size(); ++i) {
      if (operands[i].depth > operands[deepest].depth) deepest = i;
    }
    std::rotate(operands.begin(), operands.begin() + deepest, operands.begin() + deepest + 1);
    Expr out;
    out.depth = operands[0].depth;
    for (size_t i = 0; i < operands.size(); ++i) {
      absl::StrAppend(&out.sql, i == 0 ? "" : op, operands[i].sql);
      out.params.insert(out.params.end(), std::make_move_iterator(operands[i].params.begin()),
                        std::make_move_iterator(operands[i].params.end()));
    }
    return out;
  }

  absl::StatusOr<Expr> Or() {
    std::vector<Expr> operands;
    ASSIGN_OR_RETURN(Expr first, And());
    operands.push_back(std::move(first));
    while (IsKeyword(Peek(), "or")) {
      Next();
      ASSIGN_OR_RETURN(Expr next, And());
      operands.push_back(std::move(next));
    }
    return Chain(std::move(operands), " OR ");
  }

  absl::StatusOr<Expr> And() {
    std::vector<Expr> operands;
    ASSIGN_OR_RETURN(Expr first, Unary());
    operands.push_back(std::move(first));
    while (IsKeyword(Peek(), "and")) {
      Next();
      ASSIGN_OR_RETURN(Expr next, Unary());
      operands.push_back(std::move(next));
    }
    return Chain(std::move(operands), " AND ");
  }

  // Refuses one more level of NOT or '(' beyond kMaxNesting; else enters it (Leave() leaves it).
  absl::Status Enter(const Token& t) {
    if (depth_ == kMaxNesting) {
      return Bad(t.column, absl::StrCat("NOT and parentheses nested more than ", kMaxNesting, " deep"),
                 absl::StrCat("a filter nests at most ", kMaxNesting, " levels"));
    }
    ++depth_;
    return absl::OkStatus();
  }
  void Leave() { --depth_; }

  absl::StatusOr<Expr> Unary() {
    if (IsKeyword(Peek(), "not")) {
      RETURN_IF_ERROR(Enter(Next()));
      ASSIGN_OR_RETURN(Expr operand, Unary());
      Leave();
      // Comparisons against NULL columns (started, finished) are NULL; NOT of them is true. Every
      // operand is 0, 1 or NULL, so "IS NOT 1" is NOT COALESCE(operand, 0), one level less deep
      // on SQLite's parser stack.
      operand.sql = absl::StrCat("(", operand.sql, ") IS NOT 1");
      ++operand.depth;
      return operand;
    }
    if (Peek().kind == TokenKind::kLParen) {
      const Token& paren = Next();
      const int open = paren.column;
      RETURN_IF_ERROR(Enter(paren));
      ASSIGN_OR_RETURN(Expr inner, Or());
      Leave();
      if (Peek().kind != TokenKind::kRParen) {
        if (Peek().kind == TokenKind::kEnd) {
          return absl::InvalidArgumentError(
              absl::StrCat("unbalanced parentheses: the '(' at column ", open, " is never closed"));
        }
        return Bad(Peek().column, absl::StrCat("expected ')' or AND / OR, found ", Describe(Peek())));
      }
      Next();
      inner.sql = absl::StrCat("(", inner.sql, ")");
      ++inner.depth;
      return inner;
    }
    // The comparison's values: those it appends to params_.
    const size_t first_param = params_->size();
    ASSIGN_OR_RETURN(std::string sql, Comparison());
    Expr out{std::move(sql), {}, 0};
    out.params.assign(std::make_move_iterator(params_->begin() + first_param), std::make_move_iterator(params_->end()));
    params_->resize(first_param);
    return out;
  }

  absl::StatusOr<std::string> Comparison() {
    const Token& field = Next();
    if (field.kind == TokenKind::kRParen) {
      return Bad(field.column, "unbalanced parentheses: unexpected ')'");
    }
    if (++terms_ > kMaxTerms) {
      return Bad(field.column, absl::StrCat("more than ", kMaxTerms, " comparisons"),
                 absl::StrCat("a filter has at most ", kMaxTerms, " comparisons"));
    }
    if (field.kind != TokenKind::kWord || IsKeyword(field, "and") || IsKeyword(field, "or")) {
      return Bad(field.column, absl::StrCat("expected a field name, found ", Describe(field)));
    }
    const Token& op = Next();
    if (op.kind != TokenKind::kOp) {
      return Bad(op.column, absl::StrCat("expected an operator (= != < <= > >=) after '", ClipForError(field.text),
                                         "', found ", Describe(op)));
    }
    const Token& value = Next();
    if (value.kind != TokenKind::kNumber && value.kind != TokenKind::kString) {
      return Bad(value.column, absl::StrCat("expected a number or a \"string\" after '", ClipForError(field.text), " ",
                                            op.text, "', found ", Describe(value)));
    }
    const std::string& head = field.segments[0];
    if (head == "metric") return Metric(field, op, value);
    if (head == "intervention") return Intervention(field, op, value);
    if (field.segments.size() != 1 || field.quoted[0]) return UnknownField(field);
    if (head == "tag") {
      if (op.text != "=" && op.text != "!=") {
        return Bad(op.column, absl::StrCat("field 'tag' takes = or !=, not '", op.text, "'"));
      }
      if (value.kind != TokenKind::kString) {
        return Bad(value.column, absl::StrCat("field 'tag' takes a \"string\", found ", Describe(value)));
      }
      params_->push_back(value.text);
      return absl::StrCat("e.id ", op.text == "=" ? "IN" : "NOT IN",
                          " (SELECT t.experiment_id FROM experiment_tags AS t WHERE t.tag = ?)");
    }
    std::optional<std::string> column = RecordColumn(head);
    if (!column.has_value()) return UnknownField(field);
    if (IsTimeField(head)) {
      ASSIGN_OR_RETURN(int64_t micros, ParseTimeValue(value, head));
      params_->emplace_back(std::in_place_type<int64_t>, micros);
      return absl::StrCat(*column, " ", op.text, " ?");
    }
    if (value.kind != TokenKind::kString) {
      return Bad(value.column,
                 absl::StrCat("field '", ClipForError(head), "' takes a \"string\", found ", Describe(value)));
    }
    if (head == "status") {
      if (op.text != "=" && op.text != "!=") {
        return Bad(op.column, absl::StrCat("field 'status' takes = or !=, not '", op.text, "'"));
      }
      // Either case: the proto's enum names are upper case ("DONE"), the stored values lower.
      const std::string status = absl::AsciiStrToLower(value.text);
      bool known = false;
      for (absl::string_view s : kStatuses) known = known || s == status;
      if (!known) {
        return Bad(value.column, absl::StrCat("unknown status ", Describe(value)),
                   absl::StrCat("statuses are ", absl::StrJoin(kStatuses, ", ")));
      }
      params_->push_back(status);
      return absl::StrCat(*column, " ", op.text, " ?");
    }
    params_->push_back(value.text);
    return absl::StrCat(*column, " ", op.text, " ?");
  }

  absl::Status UnknownField(const Token& field) {
    return Bad(field.column, absl::StrCat("unknown field '", ClipForError(field.text), "'"),
               absl::StrCat("fields are ", kFieldList));
  }

  // metric.NAME.FIELD -> (NAME, column).
  absl::StatusOr<std::pair<std::string, std::string>> MetricField(const Token& field) {
    if (field.segments.size() < 3) {
      return Bad(field.column, absl::StrCat("metric field '", ClipForError(field.text),
                                            "' must be metric.NAME.FIELD with FIELD one of "
                                            "baseline, value, delta, delta_pct"));
    }
    const std::string& last = field.segments.back();
    if (field.quoted.back() || (last != "baseline" && last != "value" && last != "delta" && last != "delta_pct")) {
      return Bad(field.column,
                 absl::StrCat("unknown metric field '", ClipForError(last), "' in '", ClipForError(field.text), "'"),
                 "use baseline, value, delta or delta_pct");
    }
    std::vector<std::string> name(field.segments.begin() + 1, field.segments.end() - 1);
    return std::make_pair(absl::StrJoin(name, "."), last);
  }

  absl::StatusOr<std::string> Metric(const Token& field, const Token& op, const Token& value) {
    ASSIGN_OR_RETURN(auto metric, MetricField(field));
    if (value.kind != TokenKind::kNumber) {
      return Bad(value.column,
                 absl::StrCat("metric field '", ClipForError(field.text), "' takes a number, found ", Describe(value)));
    }
    params_->push_back(metric.first);
    params_->emplace_back(std::in_place_type<double>, value.number);
    return absl::StrCat("e.id IN (SELECT m.experiment_id FROM metrics AS m WHERE m.name = ? AND m.", metric.second, " ",
                        op.text, " ?)");
  }

  absl::StatusOr<std::string> Intervention(const Token& field, const Token& op, const Token& value) {
    namespace pb = google::protobuf;
    if (field.segments.size() != 3 || field.quoted[1] || field.quoted[2]) {
      return Bad(field.column,
                 absl::StrCat("intervention field '", ClipForError(field.text), "' must be intervention.KIND.FIELD"));
    }
    const pb::Descriptor* intervention = lesion::v1::Intervention::descriptor();
    const pb::FieldDescriptor* kind = intervention->FindFieldByName(field.segments[1]);
    if (kind == nullptr || kind->message_type() == nullptr) {
      std::vector<std::string> kinds;
      for (int i = 0; i < intervention->field_count(); ++i) kinds.push_back(intervention->field(i)->name());
      return Bad(field.column, absl::StrCat("unknown intervention kind '", ClipForError(field.segments[1]), "'"),
                 absl::StrCat("kinds are ", absl::StrJoin(kinds, ", ")));
    }
    const pb::Descriptor* message = kind->message_type();
    const pb::FieldDescriptor* f = message->FindFieldByName(field.segments[2]);
    if (f == nullptr || f->message_type() != nullptr) {
      std::vector<std::string> fields;
      for (int i = 0; i < message->field_count(); ++i) fields.push_back(message->field(i)->name());
      return Bad(field.column, absl::StrCat("unknown field '", ClipForError(field.segments[2]), "' of ", kind->name()),
                 absl::StrCat("its fields are ", absl::StrJoin(fields, ", ")));
    }
    const bool is_string = f->type() == pb::FieldDescriptor::TYPE_STRING || f->type() == pb::FieldDescriptor::TYPE_ENUM;
    if (is_string && value.kind != TokenKind::kString) {
      return Bad(value.column,
                 absl::StrCat("field '", ClipForError(field.text), "' takes a \"string\", found ", Describe(value)));
    }
    if (!is_string && value.kind != TokenKind::kNumber) {
      return Bad(value.column,
                 absl::StrCat("field '", ClipForError(field.text), "' takes a number, found ", Describe(value)));
    }
    if (f->type() == pb::FieldDescriptor::TYPE_ENUM && f->enum_type()->FindValueByName(value.text) == nullptr) {
      std::vector<std::string> names;
      for (int i = 0; i < f->enum_type()->value_count(); ++i) names.push_back(f->enum_type()->value(i)->name());
      return Bad(value.column, absl::StrCat("unknown value ", Describe(value), " for '", ClipForError(field.text), "'"),
                 absl::StrCat("values are ", absl::StrJoin(names, ", ")));
    }
    // The stored spec is protobuf's JSON with proto field names: defaults are omitted, int64 is
    // a JSON string, enums are names.
    const std::string kind_path = absl::StrCat("$.", kind->name());
    const std::string field_path = absl::StrCat(kind_path, ".", f->name());
    constexpr absl::string_view kEach = "EXISTS (SELECT 1 FROM json_each(e.spec_json, '$.interventions') AS iv";
    if (f->is_repeated()) {
      params_->push_back(field_path);
      const std::string element = is_string ? "el.value" : "CAST(el.value AS REAL)";
      PushValue(value, is_string);
      return absl::StrCat(kEach, ", json_each(iv.value, ?) AS el WHERE ", element, " ", op.text, " ?)");
    }
    params_->push_back(kind_path);
    params_->push_back(field_path);
    std::string extracted;
    if (f->type() == pb::FieldDescriptor::TYPE_ENUM) {
      params_->push_back(std::string(f->default_value_enum()->name()));
      extracted = "COALESCE(json_extract(iv.value, ?), ?)";
    } else if (is_string) {
      extracted = "COALESCE(json_extract(iv.value, ?), '')";
    } else {
      extracted = "CAST(COALESCE(json_extract(iv.value, ?), 0) AS REAL)";
    }
    PushValue(value, is_string);
    return absl::StrCat(kEach, " WHERE json_type(iv.value, ?) IS NOT NULL AND ", extracted, " ", op.text, " ?)");
  }

  void PushValue(const Token& value, bool is_string) {
    if (is_string) {
      params_->push_back(value.text);
    } else {
      params_->emplace_back(std::in_place_type<double>, value.number);
    }
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  std::vector<SqlValue>* params_ = nullptr;
  int depth_ = 0;  // NOT and '(' entered and not yet left
  int terms_ = 0;  // comparisons so far
};

absl::Status CheckLength(absl::string_view what, absl::string_view text) {
  if (text.size() <= kMaxQueryBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " is ", text.size(), " bytes, more than the limit of ", kMaxQueryBytes, " bytes"));
}

}  // namespace

absl::StatusOr<CompiledQuery> CompileQuery(absl::string_view where, absl::string_view order_by) {
  CompiledQuery out;
  RETURN_IF_ERROR(CheckLength("the filter", where));
  RETURN_IF_ERROR(CheckLength("order by: the order", order_by));
  {
    ASSIGN_OR_RETURN(std::vector<Token> tokens, Lex(where));
    Compiler compiler(std::move(tokens));
    ASSIGN_OR_RETURN(out.where_sql, compiler.Filter(&out.where_params));
  }
  absl::StatusOr<std::vector<Token>> tokens = Lex(order_by);
  if (!tokens.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("order by: ", tokens.status().message()));
  }
  Compiler compiler(*std::move(tokens));
  absl::StatusOr<std::string> order = compiler.Order(&out.order_params);
  if (!order.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("order by: ", order.status().message()));
  }
  out.order_sql = *std::move(order);
  return out;
}

}  // namespace lesion::storage
