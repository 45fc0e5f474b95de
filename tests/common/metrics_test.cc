// The metrics registry: labelled counters, gauges and histograms, concurrent
// updates, name rules, re-registration, and the Prometheus text format.
#include "common/metrics.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace sdfarm {
namespace {

TEST(Metrics, CountersAndGaugesPerLabelValues) {
  MetricsRegistry m;
  auto written = m.AddCounter("sdfarm_images_written_total", "Images written", {"model"});
  ASSERT_TRUE(written.ok()) << written.status();
  (*written)->With({"sd15"}).Increment();
  (*written)->With({"sd15"}).Increment(2);
  (*written)->With({"sdxl"}).Increment();
  (*written)->With({"sdxl"}).Increment(-5);  // ignored: counters only go up
  EXPECT_EQ(*m.Value("sdfarm_images_written_total", {"sd15"}), 3);
  EXPECT_EQ(*m.Value("sdfarm_images_written_total", {"sdxl"}), 1);
  EXPECT_EQ(m.Value("sdfarm_images_written_total", {"sd21"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.Value("nothing", {}).status().code(), absl::StatusCode::kNotFound);

  auto depth = m.AddGauge("sdfarm_queue_depth", "Jobs waiting", {"model"});
  ASSERT_TRUE(depth.ok());
  Gauge& g = (*depth)->With({"sd15"});
  g.Set(7);
  g.Add(-2);
  EXPECT_EQ(*m.Value("sdfarm_queue_depth", {"sd15"}), 5);
}

TEST(Metrics, TheSameSeriesIsTheSameObjectAndConcurrentIncrementsAllCount) {
  MetricsRegistry m;
  Family<Counter>* f = *m.AddCounter("c_total", "c", {"worker"});
  EXPECT_EQ(&f->With({"w1"}), &f->With({"w1"}));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([f] {
      for (int i = 0; i < 10000; ++i) f->With({"w1"}).Increment();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(*m.Value("c_total", {"w1"}), 40000);
}

TEST(Metrics, HistogramBucketsCountValuesOnTheirUpperBound) {
  MetricsRegistry m;
  Family<Histogram>* f = *m.AddHistogram("sdfarm_report_seconds", "Report latency", {}, {0.1, 1});
  Histogram& h = f->With({});
  for (double v : {0.05, 0.1, 0.5, 1.0, 3.0}) h.Observe(v);
  Histogram::Snapshot s = *m.HistogramValue("sdfarm_report_seconds", {});
  EXPECT_EQ(s.counts, std::vector<uint64_t>({2, 2, 1}));
  EXPECT_EQ(s.count, 5u);
  EXPECT_DOUBLE_EQ(s.sum, 4.65);
}

TEST(Metrics, RegisteringAgainReturnsTheFamilyOrRefusesAConflict) {
  MetricsRegistry m;
  Family<Counter>* a = *m.AddCounter("x_total", "x", {"a"});
  Family<Counter>* b = *m.AddCounter("x_total", "x", {"a"});
  EXPECT_EQ(a, b);
  EXPECT_EQ(m.AddGauge("x_total", "x", {"a"}).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(m.AddCounter("x_total", "x", {"b"}).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(m.AddHistogram("h", "h", {}, {1}).status().ok(), true);
  EXPECT_EQ(m.AddHistogram("h", "h", {}, {2}).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(Metrics, BadNamesLabelsAndBucketsAreRefused) {
  MetricsRegistry m;
  for (const char* name : {"", "1abc", "a-b", "a b"}) {
    EXPECT_EQ(m.AddCounter(name, "", {}).status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
  EXPECT_TRUE(m.AddCounter("ns:sub_total", "", {}).ok());
  EXPECT_EQ(m.AddCounter("l1", "", {"__reserved"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.AddCounter("l2", "", {"a:b"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.AddCounter("l3", "", {"a", "a"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.AddHistogram("h1", "", {"le"}, {1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.AddHistogram("h2", "", {}, {1, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.AddHistogram("h3", "", {}, {2, 1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MetricsDeathTest, WithTheWrongNumberOfLabelValuesAbortsNamingTheMetric) {
  MetricsRegistry m;
  Family<Counter>* f = *m.AddCounter("two_labels_total", "", {"a", "b"});
  EXPECT_DEATH(f->With({"only one"}), "two_labels_total takes 2 label values, given 1");
}

TEST(Metrics, RenderIsThePrometheusTextFormat) {
  MetricsRegistry m;
  (*m.AddCounter("sdfarm_failures_total", "Failed jobs,\nby reason", {"reason", "model"}))
      ->With({"worker \"lost\"", "a\\b"})
      .Increment(3);
  (*m.AddGauge("sdfarm_watchers", "Open Watch streams", {}))->With({}).Set(2.5);
  Histogram& h = (*m.AddHistogram("sdfarm_report_seconds", "Report latency", {"model"}, {0.5, 2}))->With({"sd15"});
  h.Observe(0.25);
  h.Observe(1);
  h.Observe(10);
  EXPECT_EQ(m.Render(),
            "# HELP sdfarm_failures_total Failed jobs,\\nby reason\n"
            "# TYPE sdfarm_failures_total counter\n"
            "sdfarm_failures_total{reason=\"worker \\\"lost\\\"\",model=\"a\\\\b\"} 3\n"
            "# HELP sdfarm_report_seconds Report latency\n"
            "# TYPE sdfarm_report_seconds histogram\n"
            "sdfarm_report_seconds_bucket{model=\"sd15\",le=\"0.5\"} 1\n"
            "sdfarm_report_seconds_bucket{model=\"sd15\",le=\"2\"} 2\n"
            "sdfarm_report_seconds_bucket{model=\"sd15\",le=\"+Inf\"} 3\n"
            "sdfarm_report_seconds_sum{model=\"sd15\"} 11.25\n"
            "sdfarm_report_seconds_count{model=\"sd15\"} 3\n"
            "# HELP sdfarm_watchers Open Watch streams\n"
            "# TYPE sdfarm_watchers gauge\n"
            "sdfarm_watchers 2.5\n");
}

}  // namespace
}  // namespace sdfarm
