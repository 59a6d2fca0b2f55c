"""Pure logic of the Shotline pack: numpy/OpenCV/torch only, no ComfyUI import, so unit tests import it directly."""
