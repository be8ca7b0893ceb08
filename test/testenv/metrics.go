package testenv

import (
	"fmt"

	dto "github.com/prometheus/client_model/go"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Metric finds the series of name whose labels include labels, in the registry every in-process
// replica reports to.
func Metric(name string, labels map[string]string) (*dto.Metric, error) {
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		return nil, err
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			return m, nil
		}
	}
	return nil, fmt.Errorf("no series %s%v", name, labels)
}

// Counter is the value of a counter series, 0 when it has not been counted yet.
func Counter(name string, labels map[string]string) float64 {
	m, err := Metric(name, labels)
	if err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// Histogram is a histogram series' sample count and sum, zero when it has none yet.
func Histogram(name string) (count uint64, sum float64) {
	m, err := Metric(name, nil)
	if err != nil {
		return 0, 0
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}
