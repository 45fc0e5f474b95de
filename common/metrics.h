// The farm's metrics: counters, gauges and histograms with labels, kept in a
// registry the program owns and passes down. Recording is cheap and
// thread-safe (a labelled series is looked up once and then updated with
// atomics); reading is for tests (Value, HistogramSnapshot) and for the
// Prometheus text format (Render), which a later /metrics endpoint serves.
//
//   MetricsRegistry metrics;
//   Counter& written = metrics.AddCounter("sdfarm_images_written_total",
//                                         "Images written to sweep folders", {"model"})
//                          ->With({"sd15"});
//   written.Increment();
//   Histogram& latency = metrics.AddHistogram("sdfarm_report_seconds", "...", {},
//                                             {0.01, 0.1, 1})->With({});
//   latency.Observe(0.03);
//
// Names follow Prometheus: metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names
// [a-zA-Z_][a-zA-Z0-9_]* (not starting "__"); a family's label names are fixed
// when it is added, and With() takes their values in that order. Adding a name
// again returns the same family when type, help, labels (and buckets) agree,
// and an error when they do not.
#ifndef SDFARM_COMMON_METRICS_H_
#define SDFARM_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace sdfarm {

// A value that only goes up (events: images written, failures).
class Counter {
 public:
  void Increment(double by = 1);  // by < 0 is ignored: counters never go down
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// A value that goes up and down (queue depth, open streams).
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double by);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into buckets (latencies, sizes).
class Histogram {
 public:
  struct Snapshot {
    std::vector<double> bounds;    // upper bounds, ascending, without +Inf
    std::vector<uint64_t> counts;  // per bucket (not cumulative); size bounds + 1 (+Inf last)
    uint64_t count = 0;
    double sum = 0;
  };

  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

enum class MetricType { kCounter, kGauge, kHistogram };

// One metric name with its series, one per combination of label values.
template <typename T>
class Family {
 public:
  // The series with these label values, created at zero on first use; exactly
  // one value per label name (another count is a programming error: it
  // aborts, naming the metric). The reference stays valid for the registry's
  // lifetime: look it up once, keep it.
  T& With(const std::vector<std::string>& values);

 private:
  friend class MetricsRegistry;
  Family(std::string name, std::string help, std::vector<std::string> labels, std::vector<double> bounds)
      : name_(std::move(name)), help_(std::move(help)), labels_(std::move(labels)), bounds_(std::move(bounds)) {}

  const std::string name_, help_;
  const std::vector<std::string> labels_;
  const std::vector<double> bounds_;  // histograms only
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> series_ ABSL_GUARDED_BY(mu_);
};

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  absl::StatusOr<Family<Counter>*> AddCounter(const std::string& name, const std::string& help,
                                              const std::vector<std::string>& labels);
  absl::StatusOr<Family<Gauge>*> AddGauge(const std::string& name, const std::string& help,
                                          const std::vector<std::string>& labels);
  // `bounds`: the buckets' upper bounds, strictly ascending and finite.
  absl::StatusOr<Family<Histogram>*> AddHistogram(const std::string& name, const std::string& help,
                                                  const std::vector<std::string>& labels,
                                                  const std::vector<double>& bounds);

  // The current value of a counter or gauge series; NOT_FOUND if the family
  // or the series does not exist.
  absl::StatusOr<double> Value(const std::string& name, const std::vector<std::string>& label_values) const;
  absl::StatusOr<Histogram::Snapshot> HistogramValue(const std::string& name,
                                                     const std::vector<std::string>& label_values) const;

  // Every family in the Prometheus text exposition format (version 0.0.4),
  // families by name, series by label values.
  std::string Render() const;

 private:
  struct Entry {
    MetricType type;
    std::vector<std::string> labels;
    std::vector<double> bounds;
    std::string help;
    std::unique_ptr<Family<Counter>> counter;
    std::unique_ptr<Family<Gauge>> gauge;
    std::unique_ptr<Family<Histogram>> histogram;
  };
  absl::StatusOr<Entry*> Add(MetricType type, const std::string& name, const std::string& help,
                             const std::vector<std::string>& labels, const std::vector<double>& bounds);

  mutable absl::Mutex mu_;
  std::map<std::string, Entry> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sdfarm

#endif  // SDFARM_COMMON_METRICS_H_
