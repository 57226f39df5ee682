package worker

import "testing"

func BenchmarkStart(b *testing.B) {
	for _, lang := range []string{"bash", "python"} {
		b.Run(lang, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				w, _ := startWorker(b, lang)
				w.Kill()
			}
		})
	}
}
