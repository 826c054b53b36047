package openai

import (
	"context"
	"net/http"
	"strings"

	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/pbjson"

	pb "whisperd/gateway/gen/whisperdv1"
)

// verbose is OpenAI's verbose_json transcription.
type verbose struct {
	Task     string           `json:"task"`
	Language string           `json:"language"`
	Duration float64          `json:"duration"`
	Text     string           `json:"text"`
	Segments []verboseSegment `json:"segments"`
	Words    []verboseWord    `json:"words,omitzero"` // present (maybe empty) only when words were asked for
}

type verboseSegment struct {
	ID               uint32  `json:"id"`
	Seek             int     `json:"seek"`
	Start            float64 `json:"start"`
	End              float64 `json:"end"`
	Text             string  `json:"text"`
	Tokens           []int   `json:"tokens"`
	Temperature      float32 `json:"temperature"`
	AvgLogprob       float64 `json:"avg_logprob"`
	CompressionRatio float64 `json:"compression_ratio"`
	NoSpeechProb     float32 `json:"no_speech_prob"`
}

type verboseWord struct {
	Word  string  `json:"word"`
	Start float64 `json:"start"`
	End   float64 `json:"end"`
}

// Text is the transcript as one string, as OpenAI's "text": the segments joined.
func Text(job *pb.Job) string {
	parts := make([]string, 0, len(job.GetSegments()))
	for _, s := range job.GetSegments() {
		if t := strings.TrimSpace(s.GetText()); t != "" {
			parts = append(parts, t)
		}
	}
	return strings.Join(parts, " ")
}

// languageNames turns whisperd's ISO code into the English name OpenAI reports.
var languageNames = map[string]string{
	"en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian",
	"pt": "portuguese", "nl": "dutch", "ru": "russian", "zh": "chinese", "ja": "japanese",
	"ko": "korean", "pl": "polish", "tr": "turkish", "uk": "ukrainian", "sv": "swedish",
	"ar": "arabic", "hi": "hindi", "cs": "czech", "fi": "finnish", "da": "danish", "no": "norwegian",
}

func language(code string) string {
	if name, ok := languageNames[code]; ok {
		return name
	}
	return code
}

func render(w http.ResponseWriter, ctx context.Context, b *backend.Backend, req *request, job *pb.Job) error {
	switch req.format {
	case "text":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, err := w.Write([]byte(Text(job) + "\n"))
		return err
	case "srt", "vtt":
		format := pb.TranscriptFormat_TRANSCRIPT_FORMAT_SRT
		if req.format == "vtt" {
			format = pb.TranscriptFormat_TRANSCRIPT_FORMAT_VTT
		}
		t, err := b.Jobs.GetTranscript(ctx, &pb.GetTranscriptRequest{Id: job.GetId(), Format: format})
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", t.GetContentType())
		_, err = w.Write([]byte(t.GetContent()))
		return err
	case "verbose_json":
		pbjson.WriteValue(w, http.StatusOK, verboseOf(job, req.words))
		return nil
	default:
		pbjson.WriteValue(w, http.StatusOK, map[string]string{"text": Text(job)})
		return nil
	}
}

func verboseOf(job *pb.Job, words bool) verbose {
	task := "transcribe"
	if job.GetTask() == pb.Task_TASK_TRANSLATE {
		task = "translate"
	}
	v := verbose{Task: task, Language: language(job.GetLanguage()), Duration: job.GetDurationSecs(), Text: Text(job), Segments: []verboseSegment{}}
	for _, s := range job.GetSegments() {
		v.Segments = append(v.Segments, verboseSegment{
			ID: s.GetIndex(), Start: s.GetStart(), End: s.GetEnd(), Text: s.GetText(), Tokens: []int{},
			Temperature: job.GetOptions().GetTemperature(), NoSpeechProb: s.GetNoSpeechProb(),
		})
		if words {
			for _, wd := range s.GetWords() {
				v.Words = append(v.Words, verboseWord{Word: wd.GetText(), Start: wd.GetStart(), End: wd.GetEnd()})
			}
		}
	}
	if words && v.Words == nil {
		v.Words = []verboseWord{}
	}
	return v
}
