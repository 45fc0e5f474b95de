// Counters, gauges, histograms and their registry (see metrics.h).
#include "common/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sdfarm {
namespace {

void AtomicAdd(std::atomic<double>& a, double by) {
  double old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, old + by, std::memory_order_relaxed)) {
  }
}

bool ValidName(const std::string& s, bool colon_allowed) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon_allowed && c == ':');
    const bool digit = c >= '0' && c <= '9';
    if (!letter && !(digit && i > 0)) return false;
  }
  return true;
}

// A number as Prometheus reads it: integers without a fraction, +Inf/-Inf/NaN.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<int64_t>(v));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string EscapeHelp(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

// {a="x",b="y"} (empty without labels); `extra` is one more pair already
// formatted (a histogram's le="...").
std::string LabelSet(const std::vector<std::string>& names, const std::vector<std::string>& values,
                     const std::string& extra = "") {
  std::vector<std::string> parts;
  for (size_t i = 0; i < names.size(); ++i) {
    parts.push_back(absl::StrCat(names[i], "=\"", EscapeLabelValue(values[i]), "\""));
  }
  if (!extra.empty()) parts.push_back(extra);
  if (parts.empty()) return "";
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

template <typename T>
std::unique_ptr<T> MakeSeries(const std::vector<double>&) {
  return std::make_unique<T>();
}
template <>
std::unique_ptr<Histogram> MakeSeries<Histogram>(const std::vector<double>& bounds) {
  return std::make_unique<Histogram>(bounds);
}

const char* TypeName(MetricType t) {
  switch (t) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "untyped";
}

}  // namespace

void Counter::Increment(double by) {
  if (by > 0) AtomicAdd(value_, by);
}

void Gauge::Add(double by) { AtomicAdd(value_, by); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;  // le: a value on a bound counts in that bucket
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.bounds = bounds_;
  for (size_t i = 0; i <= bounds_.size(); ++i) s.counts.push_back(counts_[i].load(std::memory_order_relaxed));
  s.count = count_.load(std::memory_order_relaxed);
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

template <typename T>
T& Family<T>::With(const std::vector<std::string>& values) {
  if (values.size() != labels_.size()) {
    std::fprintf(stderr, "metric %s takes %zu label values, given %zu\n", name_.c_str(), labels_.size(),
                 values.size());
    std::abort();
  }
  absl::MutexLock lock(&mu_);
  std::unique_ptr<T>& series = series_[values];
  if (!series) series = MakeSeries<T>(bounds_);
  return *series;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

absl::StatusOr<MetricsRegistry::Entry*> MetricsRegistry::Add(MetricType type, const std::string& name,
                                                             const std::string& help,
                                                             const std::vector<std::string>& labels,
                                                             const std::vector<double>& bounds) {
  if (!ValidName(name, /*colon_allowed=*/true)) {
    return absl::InvalidArgumentError(absl::StrCat("bad metric name \"", name, "\""));
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (!ValidName(labels[i], false) || labels[i].rfind("__", 0) == 0 ||
        (type == MetricType::kHistogram && labels[i] == "le")) {
      return absl::InvalidArgumentError(absl::StrCat("metric ", name, ": bad label name \"", labels[i], "\""));
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[i] == labels[j]) {
        return absl::InvalidArgumentError(absl::StrCat("metric ", name, ": label \"", labels[i], "\" twice"));
      }
    }
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": bucket bounds must be finite and strictly ascending"));
    }
  }
  absl::MutexLock lock(&mu_);
  auto [it, added] = families_.try_emplace(name);
  Entry& e = it->second;
  if (!added) {
    if (e.type != type || e.labels != labels || e.bounds != bounds || e.help != help) {
      return absl::AlreadyExistsError(
          absl::StrCat("metric ", name, " is already registered as another ", TypeName(e.type)));
    }
    return &e;
  }
  e.type = type;
  e.labels = labels;
  e.bounds = bounds;
  e.help = help;
  switch (type) {
    case MetricType::kCounter:
      e.counter.reset(new Family<Counter>(name, help, labels, {}));
      break;
    case MetricType::kGauge:
      e.gauge.reset(new Family<Gauge>(name, help, labels, {}));
      break;
    case MetricType::kHistogram:
      e.histogram.reset(new Family<Histogram>(name, help, labels, bounds));
      break;
  }
  return &e;
}

absl::StatusOr<Family<Counter>*> MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                                             const std::vector<std::string>& labels) {
  absl::StatusOr<Entry*> e = Add(MetricType::kCounter, name, help, labels, {});
  if (!e.ok()) return e.status();
  return (*e)->counter.get();
}

absl::StatusOr<Family<Gauge>*> MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                                         const std::vector<std::string>& labels) {
  absl::StatusOr<Entry*> e = Add(MetricType::kGauge, name, help, labels, {});
  if (!e.ok()) return e.status();
  return (*e)->gauge.get();
}

absl::StatusOr<Family<Histogram>*> MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                                                 const std::vector<std::string>& labels,
                                                                 const std::vector<double>& bounds) {
  absl::StatusOr<Entry*> e = Add(MetricType::kHistogram, name, help, labels, bounds);
  if (!e.ok()) return e.status();
  return (*e)->histogram.get();
}

absl::StatusOr<double> MetricsRegistry::Value(const std::string& name,
                                              const std::vector<std::string>& label_values) const {
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end() || it->second.type == MetricType::kHistogram) {
    return absl::NotFoundError(absl::StrCat("no counter or gauge ", name));
  }
  const Entry& e = it->second;
  if (e.counter) {
    absl::MutexLock family_lock(&e.counter->mu_);
    auto s = e.counter->series_.find(label_values);
    if (s == e.counter->series_.end()) return absl::NotFoundError(absl::StrCat(name, ": no such series"));
    return s->second->Value();
  }
  absl::MutexLock family_lock(&e.gauge->mu_);
  auto s = e.gauge->series_.find(label_values);
  if (s == e.gauge->series_.end()) return absl::NotFoundError(absl::StrCat(name, ": no such series"));
  return s->second->Value();
}

absl::StatusOr<Histogram::Snapshot> MetricsRegistry::HistogramValue(
    const std::string& name, const std::vector<std::string>& label_values) const {
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end() || it->second.type != MetricType::kHistogram) {
    return absl::NotFoundError(absl::StrCat("no histogram ", name));
  }
  const Family<Histogram>& f = *it->second.histogram;
  absl::MutexLock family_lock(&f.mu_);
  auto s = f.series_.find(label_values);
  if (s == f.series_.end()) return absl::NotFoundError(absl::StrCat(name, ": no such series"));
  return s->second->Read();
}

std::string MetricsRegistry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, e] : families_) {
    absl::StrAppend(&out, "# HELP ", name, " ", EscapeHelp(e.help), "\n# TYPE ", name, " ", TypeName(e.type), "\n");
    switch (e.type) {
      case MetricType::kCounter: {
        absl::MutexLock family_lock(&e.counter->mu_);
        for (const auto& [values, c] : e.counter->series_) {
          absl::StrAppend(&out, name, LabelSet(e.labels, values), " ", FormatValue(c->Value()), "\n");
        }
        break;
      }
      case MetricType::kGauge: {
        absl::MutexLock family_lock(&e.gauge->mu_);
        for (const auto& [values, g] : e.gauge->series_) {
          absl::StrAppend(&out, name, LabelSet(e.labels, values), " ", FormatValue(g->Value()), "\n");
        }
        break;
      }
      case MetricType::kHistogram: {
        absl::MutexLock family_lock(&e.histogram->mu_);
        for (const auto& [values, h] : e.histogram->series_) {
          const Histogram::Snapshot s = h->Read();
          uint64_t cumulative = 0;
          for (size_t i = 0; i <= s.bounds.size(); ++i) {
            cumulative += s.counts[i];
            const std::string le = i < s.bounds.size() ? FormatValue(s.bounds[i]) : "+Inf";
            absl::StrAppend(&out, name, "_bucket", LabelSet(e.labels, values, absl::StrCat("le=\"", le, "\"")), " ",
                            cumulative, "\n");
          }
          absl::StrAppend(&out, name, "_sum", LabelSet(e.labels, values), " ", FormatValue(s.sum), "\n");
          absl::StrAppend(&out, name, "_count", LabelSet(e.labels, values), " ", s.count, "\n");
        }
        break;
      }
    }
  }
  return out;
}

}  // namespace sdfarm
