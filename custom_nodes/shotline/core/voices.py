"""The speech engines and their default voices: what a character sheet's `voice` may name. No dependencies, so
the controller reads sheets without the speech stack (core/speech.py speaks)."""
ENGINES = ("edge-tts", "piper", "espeak-ng")
DEFAULT_VOICES = {"edge-tts": "en-US-AriaNeural", "piper": "en_US-joe-medium", "espeak-ng": "en-us"}
VOICE_INPUTS = {"edge-tts": "edge_tts_voice", "piper": "piper_voice", "espeak-ng": "espeak_voice"}  # Dialogue Speech's
