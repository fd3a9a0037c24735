package webhook

import "github.com/pmezard/go-difflib/difflib"

// diff is a unified diff of two texts, empty when they are equal.
func diff(want, got string) string {
	if want == got {
		return ""
	}
	d, _ := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(want), B: difflib.SplitLines(got),
		FromFile: "want", ToFile: "got", Context: 3,
	})
	return d
}
