//! duo-buffer (in progress)
