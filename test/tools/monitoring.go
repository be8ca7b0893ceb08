//go:build tools

// Package tools keeps prometheus-operator's API types in this module: the tests that apply
// config/prometheus generate the ServiceMonitor and PrometheusRule CRDs from them.
package tools

import _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
