// The whole book offline, linked from every page's header: the PDF (`make pdf`) and the zip of the
// executed notebooks with the helpers package (packed by every HTML build). Which of the two exist
// is written at build time into _static/book_downloads_available.js (window.BOOK_DOWNLOADS), so a
// book built without the PDF shows no dead link.
document.addEventListener("DOMContentLoaded", () => {
  const available = window.BOOK_DOWNLOADS || [];
  const bar = document.querySelector(".article-header-buttons");
  if (!bar || !available.length) return;
  const root = document.documentElement.dataset.content_root || "";
  const links = [
    ["book.pdf", "fa-file-pdf", "Book PDF", "The whole book as one PDF"],
    ["notebooks.zip", "fa-file-zipper", "Notebooks", "Every executed notebook with the helpers package and the install files (zip)"],
  ];
  for (const [file, icon, label, title] of links.reverse()) {
    if (!available.includes(file)) continue;
    const a = document.createElement("a");
    a.href = root + file;
    a.className = "btn btn-sm book-download";
    a.title = title;
    a.innerHTML = `<i class="fas ${icon}"></i> <span class="book-download-label">${label}</span>`;
    bar.prepend(a);
  }
});
